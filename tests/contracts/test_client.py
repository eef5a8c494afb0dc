"""``SlmClient``: timeouts, retries only where safe, the version handshake and typed errors."""

import time
from urllib.parse import parse_qs
from uuid import UUID

import pytest

from shared_contracts import errors
from shared_contracts.client import SlmClient
from shared_contracts.schemas.common import MetaInfo
from shared_contracts.schemas.fleet import FleetSummary, Node, ServiceEndpoint
from shared_contracts.version import CONTRACT_VERSION
from tests.contracts.scripted_server import Answer, ScriptedServer
from tests.fixtures.live_slm import free_port

META = {
    "service": "slm",
    "version": "0.1.0",
    "contract_version": "1.0",
    "api_version": "v1",
    "server_time": "2026-11-27T10:00:00Z",
}


@pytest.fixture
def server():
    with ScriptedServer() as scripted:
        yield scripted


def client_for(server, **kwargs) -> SlmClient:
    kwargs.setdefault("backoff_factor", 0)
    return SlmClient(server.url, "secret-token-value", **kwargs)


def test_meta_is_validated_into_the_schema_and_sends_token_and_version(server):
    server.script(Answer(body=META))
    meta = client_for(server).meta()
    assert isinstance(meta, MetaInfo)
    assert meta.server_time.tzinfo is not None
    (request,) = server.requests
    assert (request.method, request.path) == ("GET", "/api/v1/meta")
    assert request.headers["Authorization"] == "Bearer secret-token-value"
    assert request.headers["X-AutoBot-Contract"] == CONTRACT_VERSION


def test_a_get_is_retried_on_503_then_succeeds(server):
    server.script(Answer(503, {"code": "x", "message": "busy"}), Answer(502, None), Answer(body=META))
    assert client_for(server, retries=2).meta().service == "slm"
    assert len(server.requests) == 3


def test_retries_are_bounded_and_end_in_a_server_error(server):
    server.script(*[Answer(503, {"code": "busy", "message": "try later"})] * 5)
    with pytest.raises(errors.ServerError) as excinfo:
        client_for(server, retries=2).meta()
    assert len(server.requests) == 3
    assert excinfo.value.status == 503


def test_a_post_is_never_resent_after_it_reached_the_server(server):
    server.script(Answer(503, {"code": "busy", "message": "try later"}), Answer(body=META))
    with pytest.raises(errors.ServerError):
        client_for(server, retries=3)._request("POST", "/api/v1/meta", schema=MetaInfo, json={})
    assert len(server.requests) == 1


def test_retries_back_off(server):
    server.script(Answer(503, None), Answer(503, None), Answer(body=META))
    started = time.monotonic()
    client_for(server, retries=2, backoff_factor=0.2).meta()
    # urllib3 sleeps backoff * 2**(n-1) from the second retry on: 0 + 0.4 s.
    assert time.monotonic() - started >= 0.35


def test_a_slow_answer_times_out_as_unavailable(server):
    server.script(Answer(body=META, delay=1.5))
    started = time.monotonic()
    with pytest.raises(errors.SlmUnavailable):
        client_for(server, read_timeout=0.3, retries=0).meta()
    assert time.monotonic() - started < 1.4


def test_a_refused_connection_is_unavailable_without_the_token_in_the_message():
    client = SlmClient(f"http://127.0.0.1:{free_port()}", "secret-token-value", retries=1, backoff_factor=0)
    with pytest.raises(errors.SlmUnavailable) as excinfo:
        client.meta()
    assert "secret-token-value" not in str(excinfo.value)
    assert "secret-token-value" not in repr(client)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, errors.BadRequest),
        (401, errors.AuthenticationFailed),
        (403, errors.PermissionDenied),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (418, errors.RequestRejected),
    ],
)
def test_http_errors_become_typed_errors_with_the_server_code(server, status, error_class):
    server.script(Answer(status, {"code": "some_code", "message": "Said the server.", "request_id": "r-1"}))
    with pytest.raises(error_class) as excinfo:
        client_for(server, retries=0).meta()
    assert excinfo.value.status == status
    assert excinfo.value.code == "some_code"
    assert excinfo.value.message == "Said the server."
    assert excinfo.value.request_id == "r-1"


def test_field_errors_become_a_validation_failure(server):
    body = {"code": "validation_error", "message": "bad", "fields": {"port": ["too big"]}}
    server.script(Answer(400, body))
    with pytest.raises(errors.ValidationFailed) as excinfo:
        client_for(server).meta()
    assert excinfo.value.fields == {"port": ["too big"]}


def test_rate_limits_carry_retry_after(server):
    headers = {"Retry-After": "7", "X-AutoBot-Contract": "1.0"}
    server.script(Answer(429, {"code": "throttled", "message": "slow down"}, headers=headers))
    with pytest.raises(errors.RateLimited) as excinfo:
        client_for(server).meta()
    assert excinfo.value.retry_after == 7.0


def test_an_error_that_is_not_our_shape_still_maps_by_status(server):
    server.script(Answer(404, raw=b"<html>nginx</html>"))
    with pytest.raises(errors.NotFound) as excinfo:
        client_for(server).meta()
    assert excinfo.value.code == "not_found"


@pytest.mark.parametrize("header", [{"X-AutoBot-Contract": "2.0"}, {}])
def test_another_major_version_or_none_is_a_mismatch(server, header):
    server.script(Answer(body=META, headers=header))
    with pytest.raises(errors.ContractMismatch):
        client_for(server).meta()


def test_an_answer_outside_the_schema_is_a_mismatch(server):
    server.script(Answer(body={"service": "slm"}))
    with pytest.raises(errors.ContractMismatch, match="MetaInfo"):
        client_for(server).meta()


def test_newer_minor_versions_may_add_fields(server):
    server.script(Answer(body=META | {"region": "eu-1"}, headers={"X-AutoBot-Contract": "1.4"}))
    assert client_for(server).meta().version == "0.1.0"


def test_only_http_urls_are_accepted():
    with pytest.raises(ValueError, match="http"):
        SlmClient("ftp://slm", "t")


# ----------------------------------------------------------------------------------------------------
# Fleet and discovery methods: paths, query parameters, validation

NODE_ID = "6f1c1a52-4d0e-4c55-9a0c-1f8f3f7f2b10"
NODE = {
    "id": NODE_ID,
    "name": "llm-1",
    "address": "10.0.0.5",
    "ssh_port": 22,
    "ssh_user": "autobot",
    "state": "online",
    "state_reason": "",
    "labels": {"zone": "a"},
    "facts": {"os": "Debian 12", "kernel": "6.1", "cpus": 8, "memory_mb": 32000, "disk_gb": None},
    "roles": [{"role": "llm", "desired_version": "", "actual_version": "0.5.1", "status": "active"}],
    "host_key_fingerprint": "SHA256:abc",
    "last_heartbeat_at": "2026-11-27T10:00:00Z",
    "agent_version": "1.0.0",
    "created_at": "2026-11-27T09:00:00Z",
    "updated_at": "2026-11-27T10:00:00Z",
}
ENDPOINT = {
    "service": "ollama",
    "node_id": NODE_ID,
    "node_name": "llm-1",
    "address": "10.0.0.5",
    "port": 11434,
    "protocol": "http",
    "state": "running",
    "healthy": True,
    "url": "http://10.0.0.5:11434",
}


def test_list_nodes_sends_filters_and_returns_a_page_of_nodes(server):
    server.script(Answer(body={"count": 1, "next": None, "previous": None, "results": [NODE]}))
    page = client_for(server).list_nodes(state=["online", "degraded"], role="llm", search="llm", page_size=50)
    assert page.count == 1
    assert isinstance(page.results[0], Node)
    assert page.results[0].facts.cpus == 8
    (request,) = server.requests
    path, _, query = request.path.partition("?")
    assert path == "/api/v1/nodes"
    assert parse_qs(query) == {
        "page": ["1"],
        "state": ["online,degraded"],
        "role": ["llm"],
        "search": ["llm"],
        "page_size": ["50"],
    }


def test_list_nodes_refuses_a_page_below_one_without_asking(server):
    with pytest.raises(ValueError, match="page"):
        client_for(server).list_nodes(page=0)
    assert server.requests == []


def test_get_node_puts_only_a_uuid_in_the_path(server):
    server.script(Answer(body=NODE))
    assert client_for(server).get_node(NODE_ID.upper()).id == UUID(NODE_ID)
    assert server.requests[0].path == f"/api/v1/nodes/{NODE_ID}"
    with pytest.raises(ValueError, match="UUID"):
        client_for(server).get_node(f"{NODE_ID}/decommission")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("ollama", "/api/v1/discovery/ollama"),
        ("../nodes", "/api/v1/discovery/..%2Fnodes"),
        ("a b?c=d#e", "/api/v1/discovery/a%20b%3Fc%3Dd%23e"),
    ],
)
def test_discover_encodes_the_service_name_as_one_segment(server, service, path):
    server.script(Answer(body=[ENDPOINT]))
    (endpoint,) = client_for(server).discover(service)
    assert isinstance(endpoint, ServiceEndpoint)
    assert server.requests[0].path == path


def test_discovery_keeps_the_slm_order(server):
    unhealthy = ENDPOINT | {"healthy": False, "state": "stopped", "node_name": "aaa"}
    server.script(Answer(body=[ENDPOINT, unhealthy]))
    endpoints = client_for(server).discovery()
    assert [endpoint.healthy for endpoint in endpoints] == [True, False]
    assert server.requests[0].path == "/api/v1/discovery"


def test_a_list_answer_outside_the_schema_is_a_mismatch(server):
    server.script(Answer(body=[{"service": "ollama"}]))
    with pytest.raises(errors.ContractMismatch, match="ServiceEndpoint"):
        client_for(server).discover("ollama")


def test_fleet_summary(server):
    body = {"total": 2, "by_state": {"online": 2}, "by_role": {"llm": 1}, "needing_attention": [NODE_ID]}
    server.script(Answer(body=body))
    summary = client_for(server).fleet_summary()
    assert isinstance(summary, FleetSummary)
    assert summary.needing_attention == [UUID(NODE_ID)]
    assert server.requests[0].path == "/api/v1/fleet/summary"
