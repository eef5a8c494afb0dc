"""Business liveness/readiness; the SLM is information, never a reason to be unready."""

import pytest

from shared_contracts.version import CONTRACT_VERSION


@pytest.fixture
def slm_at(settings):
    def point(url: str) -> None:
        settings.SLM_API_URL = url

    return point


@pytest.mark.django_db
def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_the_slm_reachable_through_the_contract_client(client, live_slm, slm_at):
    slm_at(live_slm.url)
    body = client.get("/readyz").json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "cache", "broker"}
    slm = body["info"]["slm"]
    assert slm["reachable"] is True
    assert slm["url"] == live_slm.url
    assert slm["contract_version"] == CONTRACT_VERSION
    assert slm["slm_version"] == "0.1.0"


@pytest.mark.django_db
def test_readyz_stays_ready_when_the_slm_is_down_and_says_when_it_was_last_seen(client, live_slm, slm_at):
    slm_at(live_slm.url)
    seen = client.get("/readyz").json()["info"]["slm"]
    assert seen["reachable"] is True

    live_slm.stop()
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    slm = body["info"]["slm"]
    assert slm["reachable"] is False
    assert slm["error"] == "slm_unavailable"
    assert slm["last_seen"] == seen["last_seen"]
    assert slm["slm_version"] == "0.1.0"

    live_slm.start()
    assert client.get("/readyz").json()["info"]["slm"]["reachable"] is True
