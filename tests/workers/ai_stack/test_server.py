"""The AI-stack service's HTTP API, served in this process on a free port and called over real HTTP: the
vector store in a SQLite file of the test's own, speech from this machine's espeak-ng."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.fixtures.services import in_ci
from tests.workers.ai_stack.wav import wav_samples
from tests.workers.http_client import assert_error, call, serving
from workers.ai_stack.config import ConfigError, parse
from workers.ai_stack.server import AiStackService, make_synthesizer
from workers.ai_stack.vectors import VectorStore
from workers.jsonapi import JsonServer

LIMITS = {"max_points_per_request": 50, "max_top_k": 20, "max_metadata_bytes": 256, "tts_max_chars": 300}


@pytest.fixture
def service(tmp_path):
    """The port of the service, on a free port with a data directory of the test's own."""
    config = parse({"port": 1, "data_dir": str(tmp_path / "data"), **LIMITS})
    yield from _serve(config)


def _serve(config):
    """Yields the port of the service on ``config`` until closed (a generator: a test may stop it and
    start another on the same data directory)."""
    store = VectorStore(config.database)
    app = AiStackService(config, store, make_synthesizer(config))
    server = JsonServer(
        ("127.0.0.1", 0), app.router(), name="autobot-ai-stack", max_body_bytes=config.max_body_bytes
    )
    try:
        with serving(server):
            yield server.port
    finally:
        store.close()


@pytest.fixture
def espeak():
    if shutil.which("espeak-ng") is None:
        if in_ci():
            pytest.fail("espeak-ng is not installed (.ci/run installs it)")
        pytest.skip("espeak-ng is not installed here (apt-get install espeak-ng)")


def upsert(port, name, ids, vectors, metadata=None):
    body = {"ids": ids, "vectors": vectors}
    if metadata is not None:
        body["metadata"] = metadata
    return call(port, "PUT", f"/v1/collections/{name}/points", body)


# --- vector store -----------------------------------------------------------------------------------------


def test_upsert_then_query_returns_the_nearest_points_by_cosine(service):
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(40, 16)).astype(np.float32)
    ids = [f"doc-{index}" for index in range(40)]
    answer = upsert(service, "docs", ids, vectors.tolist(), [{"n": index} for index in range(40)])
    assert answer.status == 200, answer.body
    assert answer.json() == {"collection": "docs", "upserted": 40, "count": 40}

    query = vectors[17] + 0.05 * rng.normal(size=16).astype(np.float32)
    result = call(
        service, "POST", "/v1/collections/docs/query", {"vector": query.tolist(), "top_k": 5}
    ).json()
    expected = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    best = np.argsort(-expected)[:5]
    assert [match["id"] for match in result["results"]] == [ids[index] for index in best]
    assert result["results"][0]["id"] == "doc-17"
    np.testing.assert_allclose([match["score"] for match in result["results"]], expected[best], atol=1e-5)
    assert [match["metadata"] for match in result["results"]] == [{"n": int(index)} for index in best]
    bare = call(
        service, "POST", "/v1/collections/docs/query", {"vector": query.tolist(), "with_metadata": False}
    )
    assert len(bare.json()["results"]) == 10  # the default top_k
    assert "metadata" not in bare.json()["results"][0]


def test_upsert_replaces_delete_removes_and_the_collection_goes(service):
    upsert(service, "notes", ["a", "b"], [[1, 0], [0, 1]], [{"v": 1}, {"v": 1}])
    assert upsert(service, "notes", ["b", "c"], [[1, 0.1], [-1, 0]], [{"v": 2}, {}]).json()["count"] == 3
    top = call(service, "POST", "/v1/collections/notes/query", {"vector": [1, 0], "top_k": 2}).json()[
        "results"
    ]
    assert [(match["id"], match["metadata"]) for match in top] == [("a", {"v": 1}), ("b", {"v": 2})]

    deleted = call(service, "POST", "/v1/collections/notes/points/delete", {"ids": ["a", "missing"]})
    assert deleted.json() == {"collection": "notes", "deleted": 1}
    top = call(service, "POST", "/v1/collections/notes/query", {"vector": [1, 0], "top_k": 1}).json()[
        "results"
    ]
    assert top[0]["id"] == "b"

    info = call(service, "GET", "/v1/collections/notes").json()
    assert (info["name"], info["dimensions"], info["count"]) == ("notes", 2, 2)
    assert [item["name"] for item in call(service, "GET", "/v1/collections").json()["collections"]] == [
        "notes"
    ]
    assert call(service, "DELETE", "/v1/collections/notes").json() == {"collection": "notes", "deleted": 2}
    assert_error(call(service, "GET", "/v1/collections/notes"), 404, "collection_not_found")
    assert call(service, "GET", "/v1/collections").json() == {"collections": []}


def test_the_store_outlives_a_restart(tmp_path):
    config = parse({"port": 1, "data_dir": str(tmp_path / "data")})
    first = _serve(config)
    port = next(first)
    upsert(port, "kept", ["x", "y"], [[0.2, 0.9, 0.1], [0.9, 0.1, 0.0]], [{"t": "x"}, {"t": "y"}])
    first.close()
    second = _serve(config)
    port = next(second)
    try:
        result = call(port, "POST", "/v1/collections/kept/query", {"vector": [1, 0, 0], "top_k": 1}).json()
        assert result["results"][0]["id"] == "y"
        assert result["results"][0]["metadata"] == {"t": "y"}
    finally:
        second.close()
    assert (tmp_path / "data" / "vectors.sqlite3").is_file()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "field"),
    [
        ("PUT", "/v1/collections/c/points", {"ids": [], "vectors": []}, 400, "bad_request", "ids"),
        ("PUT", "/v1/collections/c/points", {"ids": ["a"]}, 400, "bad_request", "vectors"),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a", "a"], "vectors": [[1], [1]]},
            400,
            "bad_request",
            "ids",
        ),
        ("PUT", "/v1/collections/c/points", {"ids": [5], "vectors": [[1]]}, 400, "bad_request", "ids[0]"),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [[1, 2], [3, 4]]},
            400,
            "bad_request",
            "vectors",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a", "b"], "vectors": [[1, 2], [3]]},
            400,
            "bad_request",
            "vectors",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [["1", 2]]},
            400,
            "bad_request",
            "vectors",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [[True, 2]]},
            400,
            "bad_request",
            "vectors",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [[0, 0]]},
            400,
            "bad_request",
            "vectors",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [[1e39, 0]]},
            400,
            "bad_request",
            "vectors",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [[1]], "metadata": ["x"]},
            400,
            "bad_request",
            "metadata[0]",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [[1]], "metadata": []},
            400,
            "bad_request",
            "metadata",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [[1]], "extra": 1},
            400,
            "bad_request",
            "extra",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [[1] * 4097]},
            400,
            "bad_request",
            "vectors",
        ),
        (
            "PUT",
            "/v1/collections/-bad/points",
            {"ids": ["a"], "vectors": [[1]]},
            400,
            "bad_request",
            "collection",
        ),
        (
            "PUT",
            "/v1/collections/a%2Fb/points",
            {"ids": ["a"], "vectors": [[1]]},
            400,
            "bad_request",
            "collection",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": [str(i) for i in range(51)], "vectors": [[1]] * 51},
            413,
            "too_many_points",
            "ids",
        ),
        (
            "PUT",
            "/v1/collections/c/points",
            {"ids": ["a"], "vectors": [[1]], "metadata": [{"t": "x" * 300}]},
            413,
            "metadata_too_large",
            "metadata[0]",
        ),
        ("POST", "/v1/collections/absent/query", {"vector": [1]}, 404, "collection_not_found", "collection"),
        (
            "POST",
            "/v1/collections/absent/points/delete",
            {"ids": ["a"]},
            404,
            "collection_not_found",
            "collection",
        ),
        ("DELETE", "/v1/collections/absent", None, 404, "collection_not_found", "collection"),
        ("POST", "/v1/collections/absent/query", {}, 400, "bad_request", "vector"),
        ("POST", "/v1/collections/absent/query", {"vector": [1], "top_k": 0}, 400, "bad_request", "top_k"),
        ("POST", "/v1/collections/absent/query", {"vector": [1], "top_k": 21}, 400, "bad_request", "top_k"),
        (
            "POST",
            "/v1/collections/absent/query",
            {"vector": [1], "with_metadata": "yes"},
            400,
            "bad_request",
            "with_metadata",
        ),
        ("GET", "/v1/collection", None, 404, "not_found", None),
        ("POST", "/v1/collections", {}, 405, "method_not_allowed", None),
    ],
)
def test_bad_vector_requests_get_a_typed_error(service, method, path, body, status, code, field):
    assert_error(call(service, method, path, body), status, code, field)


def test_vectors_must_keep_the_collections_dimensions(service):
    upsert(service, "fixed", ["a"], [[1, 0, 0]])
    assert_error(upsert(service, "fixed", ["b"], [[1, 0]]), 400, "dimension_mismatch", "vectors")
    assert_error(
        call(service, "POST", "/v1/collections/fixed/query", {"vector": [1, 0]}),
        400,
        "dimension_mismatch",
        "vector",
    )
    assert (
        call(service, "GET", "/v1/collections/fixed").json()["count"] == 1
    )  # the refused upsert left nothing


def test_a_body_over_the_limit_is_refused(tmp_path):
    config = parse({"port": 1, "data_dir": str(tmp_path / "data"), "max_body_bytes": 1000})
    serving_ = _serve(config)
    port = next(serving_)
    try:
        # A megabyte against a limit of 1000 bytes: refused on its Content-Length, and the answer still
        # reaches the client that is busy sending the rest.
        for _ in range(3):
            assert_error(upsert(port, "big", ["a"], [[0.5] * 200_000]), 413, "payload_too_large")
        assert call(port, "GET", "/v1/collections").json() == {"collections": []}
    finally:
        serving_.close()


# --- speech -----------------------------------------------------------------------------------------------


def test_tts_speaks_the_text_as_a_wav(service, espeak):
    answer = call(service, "POST", "/v1/tts", {"text": "Hello from the AutoBot AI stack.", "voice": "en-gb"})
    assert answer.status == 200, answer.body[:300]
    assert answer.headers["Content-Type"] == "audio/wav"
    rate, samples = wav_samples(answer.body)
    assert rate == 22050
    assert len(samples) / rate > 1.0  # seconds of speech
    assert np.abs(samples.astype(np.int32)).max() > 1000  # not silence
    slow = call(service, "POST", "/v1/tts", {"text": "Hello from the AutoBot AI stack.", "speed": 100})
    assert len(wav_samples(slow.body)[1]) > len(samples)


def test_text_that_looks_like_options_is_spoken_not_obeyed(service, espeak, tmp_path):
    answer = call(service, "POST", "/v1/tts", {"text": f"--version -w {tmp_path}/x.wav"})
    assert answer.status == 200
    assert len(wav_samples(answer.body)[1]) > 0
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({}, 400, "bad_request", "text"),
        ({"text": " "}, 400, "bad_request", "text"),
        ({"text": 7}, 400, "bad_request", "text"),
        ({"text": "x" * 301}, 413, "text_too_long", "text"),
        ({"text": "hi", "voice": "--stdout"}, 400, "bad_request", "voice"),
        ({"text": "hi", "voice": "af"}, 400, "bad_request", "voice"),  # installed, but not allowed
        ({"text": "hi", "speed": 1000}, 400, "bad_request", "speed"),
        ({"text": "hi", "speed": "fast"}, 400, "bad_request", "speed"),
        ({"text": "hi", "pitch": 50}, 400, "bad_request", "pitch"),
    ],
)
def test_bad_tts_requests_get_a_typed_error(service, body, status, code, field):
    assert_error(call(service, "POST", "/v1/tts", body), status, code, field)


def test_health_reports_both_parts(service, espeak):
    answer = call(service, "GET", "/health")
    assert answer.status == 200
    health = answer.json()
    assert health["status"] == "ok"
    assert health["vector_store"] == {"ok": True, "collections": 0}
    assert health["tts"]["ok"] is True


def test_without_espeak_health_is_503_and_tts_says_why(tmp_path):
    config = parse({"port": 1, "data_dir": str(tmp_path / "data"), "espeak": str(tmp_path / "no-espeak")})
    serving_ = _serve(config)
    port = next(serving_)
    try:
        health = call(port, "GET", "/health")
        assert health.status == 503
        assert health.json()["status"] == "degraded"
        assert health.json()["vector_store"]["ok"] is True
        assert_error(call(port, "POST", "/v1/tts", {"text": "hi"}), 503, "tts_unavailable")
        assert upsert(port, "still", ["a"], [[1]]).status == 200  # the vector store keeps serving
    finally:
        serving_.close()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"tts_voices": ["en-us", "--help"]}, "espeak-ng does not use"),
        ({"tts_voices": []}, "non-empty list"),
        ({"tts_default_voice": "de"}, "not in tts_voices"),
        ({"port": True}, "positive integer"),
        ({"max_top_k": 5.5}, "positive integer"),
        ({"vectors": 1}, "unknown keys"),
    ],
)
def test_a_bad_config_is_refused_with_its_reason(raw, message):
    base = {"tts_voices": ["en-us"]} if "tts_default_voice" in raw else {}
    with pytest.raises(ConfigError, match=message):
        parse({**base, **raw})
