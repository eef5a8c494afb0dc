"""Provider health: the beat task probes every enabled provider with a zero-token call, keeps a history,
feeds the circuit breaker, and old history is pruned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from business_project.integrations.slm import gateway
from business_project.llm import tasks
from business_project.llm.models import Provider, ProviderHealthCheck
from business_project.llm.selectors import list_available_models
from shared_contracts.schemas.fleet import ServiceEndpoint
from tests.fixtures.live_slm import free_port

pytestmark = pytest.mark.django_db


def test_the_beat_schedule_runs_the_probe_every_30_seconds():
    entry = django_settings.CELERY_BEAT_SCHEDULE["llm-provider-health"]
    assert entry == {"task": "llm.provider_health_check", "schedule": 30.0}
    assert tasks.provider_health_check.name == "llm.provider_health_check"
    assert (
        django_settings.CELERY_BEAT_SCHEDULE["llm-provider-health-prune"]["task"]
        == tasks.provider_health_prune.name
    )


@pytest.mark.parametrize(("kind", "path"), [("openai", "/v1/models"), ("ollama", "/api/tags")])
def test_a_healthy_provider_is_recorded_with_its_latency_and_models(scripted_llm, kind, path):
    scripted_llm.script(models=["m1", "m2"])
    provider = scripted_llm.register_provider(kind=kind, api_key="sk-probe-key-0000000000")

    assert tasks.provider_health_check() == 1

    [check] = ProviderHealthCheck.objects.all()
    assert check.provider_id == provider.id
    assert check.ok is True
    assert check.latency_ms is not None
    assert check.latency_ms >= 0
    assert (check.status_code, check.error, check.models_seen) == (200, "", ["m1", "m2"])
    assert check.url == scripted_llm.url + path
    [request] = scripted_llm.requests
    assert (request.method, request.path) == ("GET", path)  # a zero-token call: no completion asked
    assert request.headers["authorization"] == "Bearer sk-probe-key-0000000000"
    provider.refresh_from_db()
    assert provider.last_check_ok is True
    assert provider.last_checked_at == check.checked_at


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ({"status": 503}, "HTTP 503: scripted failure 503"),
        ({"garbage": b"<html>hello</html>"}, "garbage: the answer is not JSON"),
        ({"garbage": b'{"models": "nope", "data": 3}'}, "garbage: the model listing has no"),
        ({"drop_before_headers": True}, "RemoteProtocolError"),
    ],
)
def test_a_failing_provider_is_recorded_and_counted(scripted_llm, script, error):
    scripted_llm.script(**script)
    provider = scripted_llm.register_provider()

    tasks.provider_health_check()

    [check] = ProviderHealthCheck.objects.all()
    assert check.ok is False
    assert error in check.error
    provider.refresh_from_db()
    assert provider.consecutive_failures == 1
    assert provider.last_check_ok is False
    assert error in provider.last_error


def test_probes_open_the_breaker_and_a_good_probe_closes_it(scripted_llm, settings):
    settings.LLM_BREAKER_FAILURE_THRESHOLD = 3
    scripted_llm.script(status=500)
    provider = scripted_llm.register_provider()

    for _ in range(3):
        tasks.provider_health_check()
    provider.refresh_from_db()
    assert provider.consecutive_failures == 3
    assert provider.breaker_opened_until > timezone.now()
    assert [p.status for p in list_available_models()] == ["unavailable"]

    scripted_llm.script()  # back
    tasks.provider_health_check()  # probes ignore the breaker: that is how it learns

    provider.refresh_from_db()
    assert (provider.consecutive_failures, provider.breaker_opened_until) == (0, None)
    assert [p.status for p in list_available_models()] == ["healthy"]
    assert ProviderHealthCheck.objects.filter(provider=provider).count() == 4


def test_every_enabled_provider_is_probed_and_disabled_ones_are_not(scripted_llm_factory):
    up, other = scripted_llm_factory(), scripted_llm_factory()
    up.register_provider(name="up")
    off = other.register_provider(name="off")
    Provider.objects.filter(pk=off.pk).update(enabled=False)
    Provider.objects.create(name="refused", base_url=f"http://127.0.0.1:{free_port()}")

    assert tasks.provider_health_check() == 2

    checks = {check.provider.name: check for check in ProviderHealthCheck.objects.select_related("provider")}
    assert set(checks) == {"up", "refused"}
    assert checks["up"].ok is True
    assert checks["refused"].ok is False
    assert "ConnectError" in checks["refused"].error
    assert other.requests == []


def discovery(url: str, *, stale: bool = False) -> gateway.DiscoveryResult:
    host, port = url.removeprefix("http://").split(":")
    endpoint = ServiceEndpoint(
        service="ollama",
        node_id="6f1c1a52-4d0e-4c55-9a0c-1f8f3f7f2b10",
        node_name="llm-1",
        address=host,
        port=int(port),
        protocol="http",
        state="running",
        healthy=True,
        url=url,
    )
    return gateway.DiscoveryResult(
        service="llm",
        registry_name="ollama",
        endpoints=(endpoint,),
        stale=stale,
        fetched_at=datetime.now(UTC),
    )


def test_a_discovered_provider_is_probed_where_the_slm_says(scripted_llm, monkeypatch):
    asked = []
    monkeypatch.setattr(
        gateway, "discover", lambda service: asked.append(service) or discovery(scripted_llm.url)
    )
    Provider.objects.create(name="fleet-ollama", kind="ollama", discover=True)

    tasks.provider_health_check()

    assert asked == ["llm"]
    [check] = ProviderHealthCheck.objects.all()
    assert check.ok is True
    assert check.url == f"{scripted_llm.url}/api/tags"


def test_a_discovered_provider_without_an_answer_from_the_slm_is_a_failed_check(monkeypatch):
    def never_answered(service):
        raise gateway.SlmNeverAnswered("down", code="slm_unavailable")

    monkeypatch.setattr(gateway, "discover", never_answered)
    Provider.objects.create(name="fleet-ollama", kind="ollama", discover=True)

    tasks.provider_health_check()

    [check] = ProviderHealthCheck.objects.all()
    assert check.ok is False
    assert check.error == "the SLM did not say where the LLM runs (slm_unavailable)"


def test_old_history_is_pruned(settings):
    settings.LLM_HEALTH_RETENTION_DAYS = 7
    provider = Provider.objects.create(name="p", base_url="http://127.0.0.1:9")
    now = timezone.now()
    for age in (timedelta(days=8), timedelta(days=7, minutes=1), timedelta(days=6), timedelta(seconds=1)):
        ProviderHealthCheck.objects.create(provider=provider, checked_at=now - age, ok=True)

    assert tasks.provider_health_prune() == 2

    remaining = sorted(now - check.checked_at for check in ProviderHealthCheck.objects.all())
    assert remaining[-1] < timedelta(days=7)
    assert len(remaining) == 2
