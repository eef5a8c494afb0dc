"""The SLM gateway: one pooled client per process, answers cached for a TTL, the last answer served
(marked stale) while the SLM is down, and an outage is a status for readiness, never an exception."""

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.core.cache import cache

from business_project.integrations.slm import gateway
from tests.contracts.scripted_server import Answer, ScriptedServer
from tests.fixtures.live_slm import base_process_env, free_port

REPO_DIR = Path(__file__).resolve().parents[3]


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


# ----------------------------------------------------------------------------------------------------
# Discovery and the fleet summary: TTL cache, stale fallback, typed errors

NODE_ID = "6f1c1a52-4d0e-4c55-9a0c-1f8f3f7f2b10"


def endpoint(service: str = "ollama", *, healthy: bool = True, port: int = 11434) -> dict:
    return {
        "service": service,
        "node_id": NODE_ID,
        "node_name": "llm-1",
        "address": "10.0.0.5",
        "port": port,
        "protocol": "http",
        "state": "running" if healthy else "stopped",
        "healthy": healthy,
        "url": f"http://10.0.0.5:{port}",
    }


SUMMARY = {"total": 1, "by_state": {"online": 1}, "by_role": {"llm": 1}, "needing_attention": []}
DOWN = Answer(503, {"code": "unavailable", "message": "down"})


@pytest.fixture(autouse=True)
def _own_cache_namespace(monkeypatch):
    # Each test its own cache keys: no cache.clear(), which on Redis would empty the whole database.
    monkeypatch.setattr(gateway, "CACHE_PREFIX", f"slm-gateway-test-{uuid.uuid4().hex}")


@pytest.fixture
def scripted_slm(settings):
    with ScriptedServer() as server:
        settings.SLM_API_URL = server.url
        settings.SLM_API_TOKEN = "tok-never-shown"
        settings.SLM_CACHE_TTL = 30
        yield server


def test_discover_maps_business_names_to_registry_names():
    assert gateway.registry_name("llm") == "ollama"
    assert gateway.registry_name("redis") == "redis-server"
    assert gateway.registry_name("ai-stack") == "autobot-ai-stack"
    assert gateway.registry_name("autobot-npu-worker") == "autobot-npu-worker"  # passed through


def test_discover_asks_the_slm_once_within_the_ttl(scripted_slm):
    scripted_slm.script(Answer(body=[endpoint(), endpoint(healthy=False, port=11435)]))
    first = gateway.discover("llm")
    second = gateway.discover("llm")
    assert [request.path for request in scripted_slm.requests] == ["/api/v1/discovery/ollama"]
    assert scripted_slm.requests[0].headers["Authorization"] == "Bearer tok-never-shown"
    assert first == second
    assert (first.service, first.registry_name, first.stale) == ("llm", "ollama", False)
    assert [e.port for e in first.endpoints] == [11434, 11435]  # the SLM's order, healthy first
    assert [e.port for e in first.healthy] == [11434]
    assert first.fetched_at.tzinfo is not None


def test_after_the_ttl_the_slm_is_asked_again(scripted_slm, settings):
    settings.SLM_CACHE_TTL = 0
    scripted_slm.script(Answer(body=[endpoint()]), Answer(body=[]))
    assert len(gateway.discover("llm").endpoints) == 1
    again = gateway.discover("llm")
    assert again.endpoints == ()
    assert again.stale is False
    assert len(scripted_slm.requests) == 2


def test_the_service_name_is_one_encoded_path_segment(scripted_slm):
    scripted_slm.script(Answer(body=[]))
    gateway.discover("odd/name?x=1")
    assert scripted_slm.requests[0].path == "/api/v1/discovery/odd%2Fname%3Fx%3D1"


def test_a_failing_slm_serves_the_last_answer_marked_stale(scripted_slm, settings):
    settings.SLM_CACHE_TTL = 0
    scripted_slm.script(Answer(body=SUMMARY), *[DOWN] * 3)
    fresh = gateway.fleet_summary()
    stale = gateway.fleet_summary()
    assert stale.stale is True
    assert stale.summary == fresh.summary
    assert stale.fetched_at == fresh.fetched_at
    assert len(scripted_slm.requests) == 4  # one answer, then the client's three tries


def test_after_a_failure_the_stale_answer_is_served_without_asking_again(scripted_slm):
    scripted_slm.script(Answer(body=[endpoint()]), *[DOWN] * 3)
    gateway.discover("llm")
    _age_cache_entry("discover:ollama", seconds=60)
    assert gateway.discover("llm").stale is True
    asked = len(scripted_slm.requests)
    assert gateway.discover("llm").stale is True
    assert len(scripted_slm.requests) == asked  # within the outage back-off: the SLM is left alone


def test_never_answered_is_a_typed_error(scripted_slm):
    scripted_slm.script(*[DOWN] * 3)
    with pytest.raises(gateway.SlmNeverAnswered) as excinfo:
        gateway.discover("llm")
    assert excinfo.value.code == "unavailable"
    assert "tok-never-shown" not in str(excinfo.value)


def test_a_refusal_is_not_an_outage(scripted_slm, settings):
    settings.SLM_CACHE_TTL = 0
    scripted_slm.script(
        Answer(body=[endpoint()]), Answer(401, {"code": "authentication_failed", "message": "bad token"})
    )
    gateway.discover("llm")
    with pytest.raises(gateway.SlmRequestFailed) as excinfo:
        gateway.discover("llm")  # a last answer exists, but a rejected token must not be hidden
    assert excinfo.value.code == "authentication_failed"


def test_an_answer_outside_the_contract_is_a_request_failure(scripted_slm):
    scripted_slm.script(Answer(body=[{"service": "ollama"}]))
    with pytest.raises(gateway.SlmRequestFailed) as excinfo:
        gateway.discover("llm")
    assert excinfo.value.code == "contract_mismatch"


def test_a_cache_entry_that_no_longer_validates_is_ignored(scripted_slm):
    cache.set(gateway._cache_key("discover:ollama"), {"fetched_at": time.time(), "value": [{"x": 1}]})
    scripted_slm.script(Answer(body=[endpoint()]))
    assert gateway.discover("llm").endpoints[0].port == 11434
    assert len(scripted_slm.requests) == 1


def _age_cache_entry(name: str, *, seconds: float) -> None:
    key = gateway._cache_key(name)
    entry = cache.get(key)
    cache.set(key, entry | {"fetched_at": entry["fetched_at"] - seconds})


# --- against a live SLM ------------------------------------------------------------------------------


@pytest.fixture
def business_token(live_slm):
    return live_slm.api_token(["discovery:read", "nodes:read"])


def test_live_discovery_is_cached_and_survives_an_slm_outage(settings, live_slm, business_token):
    settings.SLM_API_URL = live_slm.url
    settings.SLM_API_TOKEN = business_token
    settings.SLM_CACHE_TTL = 30
    path = "/api/v1/discovery/ollama"
    before = live_slm.access_log_requests(path)
    fresh = gateway.discover("llm")
    summary = gateway.fleet_summary()
    assert (fresh.stale, summary.stale) == (False, False)
    assert gateway.discover("llm") == fresh  # within the TTL: from the cache
    _wait_for(lambda: live_slm.access_log_requests(path) > before)
    time.sleep(0.3)  # a second request, had there been one, would be logged by now
    assert live_slm.access_log_requests(path) == before + 1

    live_slm.stop()
    settings.SLM_CACHE_TTL = 0
    stale = gateway.discover("llm")
    assert stale.stale is True
    assert (stale.endpoints, stale.fetched_at) == (fresh.endpoints, fresh.fetched_at)
    stale_summary = gateway.fleet_summary()
    assert stale_summary.stale is True
    assert stale_summary.summary == summary.summary
    with pytest.raises(gateway.SlmNeverAnswered):
        gateway.discover("ai-stack")  # never asked while the SLM was up


def _wait_for(condition, timeout: float = 5.0) -> None:
    # gunicorn writes its access-log line after the answer has been sent.
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------------
# Readiness: is our token accepted?


@pytest.mark.parametrize(
    ("scopes", "expected"),
    [
        (["discovery:read", "nodes:read"], "accepted"),
        (["nodes:read"], "insufficient_scope"),
        (None, "rejected"),
    ],
)
def test_the_status_says_whether_the_slm_accepts_the_token(settings, live_slm, scopes, expected):
    settings.SLM_API_URL = live_slm.url
    settings.SLM_API_TOKEN = live_slm.api_token(scopes) if scopes else f"slm_{'0' * 16}_made-up"
    status = gateway.slm_status()
    assert status.reachable is True
    assert status.token == expected
    assert settings.SLM_API_TOKEN not in str(status.as_dict())


def test_without_a_token_the_status_says_missing(settings, live_slm):
    settings.SLM_API_URL = live_slm.url
    settings.SLM_API_TOKEN = ""
    assert gateway.slm_status().as_dict()["token"] == "missing"


def test_an_unreachable_slm_leaves_the_token_unchecked(settings):
    settings.SLM_API_URL = f"http://127.0.0.1:{free_port()}"
    settings.SLM_API_TOKEN = "tok-never-shown"
    assert gateway.slm_status().token == "unchecked"


# ----------------------------------------------------------------------------------------------------
# Settings: the token file `make run` writes


def _token_settings(tmp_path, **env) -> str:
    code = (
        "from business_project.config.settings.integrations import slm;"
        "print(slm.SLM_API_TOKEN_FILE); print(slm.SLM_API_TOKEN == 'from-the-file', bool(slm.SLM_API_TOKEN))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_DIR,
        env=base_process_env() | {"BUSINESS_VAR_DIR": str(tmp_path)} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_the_token_is_read_from_the_token_file_when_the_variable_is_unset(tmp_path):
    assert _token_settings(tmp_path) == f"{tmp_path / 'business' / 'slm_api_token'}\nFalse False\n"
    token_file = tmp_path / "business" / "slm_api_token"
    token_file.parent.mkdir()
    token_file.write_text("from-the-file\n")
    assert _token_settings(tmp_path).endswith("True True\n")
    assert _token_settings(tmp_path, SLM_API_TOKEN="from-env").endswith("False True\n")
    other = tmp_path / "elsewhere"
    other.write_text("from-the-file")
    assert _token_settings(tmp_path / "x", BUSINESS_SLM_API_TOKEN_FILE=str(other)) == f"{other}\nTrue True\n"
