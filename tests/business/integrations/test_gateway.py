"""The SLM gateway: one pooled client per process, and an outage is a status, never an exception."""

import time

import pytest

from business_project.integrations.slm import gateway
from tests.fixtures.live_slm import free_port


@pytest.fixture(autouse=True)
def _fresh_clients(monkeypatch):
    monkeypatch.setattr(gateway, "_clients", {})


def test_the_client_is_built_once_from_settings(settings):
    settings.SLM_API_URL = "http://127.0.0.1:9/"
    settings.SLM_API_TOKEN = "tok-never-shown"
    client = gateway.get_client()
    assert client is gateway.get_client()
    assert client.base_url == "http://127.0.0.1:9"
    assert client.timeout == (settings.SLM_CONNECT_TIMEOUT, settings.SLM_READ_TIMEOUT)
    assert "tok-never-shown" not in repr(client)


def test_a_changed_url_rebuilds_the_client(settings):
    settings.SLM_API_URL = "http://127.0.0.1:9"
    first = gateway.get_client()
    settings.SLM_API_URL = "http://127.0.0.1:10"
    assert gateway.get_client() is not first


def test_an_unreachable_slm_is_reported_not_raised_and_quickly(settings):
    settings.SLM_API_URL = f"http://127.0.0.1:{free_port()}"
    settings.SLM_API_TOKEN = "tok-never-shown"
    started = time.monotonic()
    status = gateway.slm_status()
    # One attempt, no backoff: readiness probes time out after about a second.
    assert time.monotonic() - started < 0.5
    assert status.reachable is False
    assert status.error == "slm_unavailable"
    assert "tok-never-shown" not in str(status.as_dict())


def test_the_status_of_a_live_slm(settings, live_slm):
    settings.SLM_API_URL = live_slm.url
    status = gateway.slm_status()
    assert status.reachable is True
    assert status.latency_ms is not None
    assert status.error is None
