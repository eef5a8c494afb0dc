"""``SlmClient``: timeouts, retries only where safe, the version handshake and typed errors."""

import time

import pytest

from shared_contracts import errors
from shared_contracts.client import SlmClient
from shared_contracts.schemas.common import MetaInfo
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
