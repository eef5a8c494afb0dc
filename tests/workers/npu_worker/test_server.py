"""The embedding worker's HTTP API, served in this process on a free port and called over real HTTP."""

from __future__ import annotations

import base64
import http.client

import numpy as np
import pytest

from tests.workers.http_client import assert_error, call, serving
from tests.workers.npu_worker import reference
from workers.jsonapi import JsonServer
from workers.npu_worker.config import Config, ConfigError, parse
from workers.npu_worker.model import MODEL_NAME, Embedder, packaged_model_dir
from workers.npu_worker.server import EmbeddingService

LIMITS = {"max_batch": 4, "max_input_chars": 4000, "max_body_bytes": 64 * 1024, "queue_timeout_seconds": 0.2}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(packaged_model_dir())


@pytest.fixture
def service(embedder) -> EmbeddingService:
    return EmbeddingService(parse({"port": 1, **LIMITS}), embedder)


@pytest.fixture
def port(service):
    server = JsonServer(
        ("127.0.0.1", 0), service.router(), name="autobot-npu-worker", max_body_bytes=LIMITS["max_body_bytes"]
    )
    with serving(server):
        yield server.port


def test_health_reports_the_loaded_model(port):
    answer = call(port, "GET", "/health")
    assert answer.status == 200
    assert answer.json() == {
        "status": "ok",
        "model": MODEL_NAME,
        "dimensions": reference.DIMENSIONS,
        "max_tokens": 256,
        "max_batch": LIMITS["max_batch"],
    }
    assert call(port, "GET", "/v1/models").json()["data"][0]["id"] == MODEL_NAME


def test_embeddings_are_openai_compatible_and_match_the_reference(port):
    answer = call(port, "POST", "/v1/embeddings", {"input": list(reference.TEXTS), "model": MODEL_NAME})
    assert answer.status == 200, answer.body[:500]
    body = answer.json()
    assert body["object"] == "list"
    assert body["model"] == MODEL_NAME
    assert [item["index"] for item in body["data"]] == [0, 1, 2, 3]
    assert {item["object"] for item in body["data"]} == {"embedding"}
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert vectors.shape == (4, reference.DIMENSIONS)
    for vector, expected in zip(vectors, reference.FIRST_DIMS, strict=True):
        np.testing.assert_allclose(vector[:8], expected, atol=reference.TOLERANCE, rtol=0)
    assert vectors[0] @ vectors[1] == pytest.approx(reference.COSINE_FOXES, abs=reference.TOLERANCE)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 256


def test_a_single_string_and_base64_encoding(port):
    plain = call(port, "POST", "/v1/embeddings", {"input": reference.TEXTS[0]}).json()
    assert len(plain["data"]) == 1
    packed = call(
        port,
        "POST",
        "/v1/embeddings",
        {
            "input": reference.TEXTS[0],
            "encoding_format": "base64",
            "model": f"sentence-transformers/{MODEL_NAME}",
        },
    ).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.array(plain["data"][0]["embedding"], dtype=np.float32))


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({}, 400, "bad_request", "input"),
        ({"input": []}, 400, "bad_request", "input"),
        ({"input": 42}, 400, "bad_request", "input"),
        ({"input": ["fine", 7]}, 400, "bad_request", "input[1]"),
        ({"input": [[101, 2023, 102]]}, 400, "bad_request", "input[0]"),
        ({"input": "   "}, 400, "bad_request", "input"),
        ({"input": "x", "temperature": 1}, 400, "bad_request", "temperature"),
        ({"input": "x", "encoding_format": "int8"}, 400, "bad_request", "encoding_format"),
        ({"input": "x", "dimensions": 512}, 400, "bad_request", "dimensions"),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "model_not_found", "model"),
        ({"input": ["a"] * 5}, 413, "batch_too_large", "input"),
        ({"input": ["a", "b" * 4001]}, 413, "input_too_large", "input[1]"),
    ],
    ids=[
        "no-input",
        "empty-list",
        "number",
        "non-string-item",
        "token-ids",
        "blank",
        "unknown-field",
        "encoding",
        "dimensions",
        "unknown-model",
        "batch",
        "long-text",
    ],
)
def test_bad_requests_get_a_typed_error(port, body, status, code, field):
    assert_error(call(port, "POST", "/v1/embeddings", body), status, code, field)


def test_bodies_that_are_not_json_objects_are_refused(port):
    assert_error(call(port, "POST", "/v1/embeddings", raw=b"{not json"), 400, "invalid_json")
    assert_error(call(port, "POST", "/v1/embeddings", raw=b'["a list"]'), 400, "invalid_json")
    assert_error(call(port, "POST", "/v1/embeddings", raw=b""), 400, "invalid_json")
    assert_error(call(port, "POST", "/v1/embeddings", raw=b"\xff\xfe"), 400, "invalid_json")


def test_an_oversized_body_is_refused_unread(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    # Only the headers are sent: the worker answers from Content-Length alone and closes the connection.
    connection.putrequest("POST", "/v1/embeddings")
    connection.putheader("Content-Length", str(LIMITS["max_body_bytes"] + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert response.headers["Connection"] == "close"
    assert response.read().startswith(b'{"code":"payload_too_large"')


def test_a_chunked_body_needs_a_length(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    # The headers alone: the worker answers before any chunk (and closes; a chunk sent later would meet a
    # closed socket).
    connection.putrequest("POST", "/v1/embeddings")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411
    assert response.headers["Connection"] == "close"
    assert b'"length_required"' in response.read()


def test_wrong_paths_and_methods_keep_the_connection_usable(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    assert_error(
        call(port, "POST", "/v2/embeddings", {"input": "x"}, connection=connection), 404, "not_found"
    )
    assert_error(call(port, "GET", "/v1/embeddings", connection=connection), 405, "method_not_allowed")
    # The refused requests' bodies were read: the same keep-alive connection serves the next one.
    assert call(port, "POST", "/v1/embeddings", {"input": "x"}, connection=connection).status == 200


def test_a_request_that_waits_too_long_for_its_turn_is_told_to_retry(service, port):
    with service._turn:  # a forward pass in progress
        assert_error(call(port, "POST", "/v1/embeddings", {"input": "x"}), 503, "busy")
    assert call(port, "POST", "/v1/embeddings", {"input": "x"}).status == 200


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"port": "8081"}, "port must be a positive integer"),
        ({"port": 70000}, "at most 65535"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"max_tokens": 1000}, "max_tokens"),
        ({"workers": 2}, "unknown keys"),
    ],
)
def test_a_bad_config_is_refused_with_its_reason(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse(raw)
    assert Config().port == 8081
