"""The numpy encoder against sentence-transformers' own numbers (reference.py), and the weights reader."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tests.workers.npu_worker import reference
from workers.npu_worker import weights
from workers.npu_worker.model import Embedder, ModelError, packaged_model_dir


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(packaged_model_dir())


def test_embeddings_match_sentence_transformers(embedder):
    vectors, tokens = embedder.embed(list(reference.TEXTS))
    assert vectors.shape == (len(reference.TEXTS), reference.DIMENSIONS)
    assert vectors.dtype == np.float32
    for vector, expected in zip(vectors, reference.FIRST_DIMS, strict=True):
        np.testing.assert_allclose(vector[:8], expected, atol=reference.TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(reference.COSINE_FOXES, abs=reference.TOLERANCE)
    assert float(vectors[0] @ vectors[2]) == pytest.approx(
        reference.COSINE_FOX_REVENUE, abs=reference.TOLERANCE
    )
    # The long text was cut at 256 word pieces ([CLS] and [SEP] included).
    assert embedder.count_tokens([reference.TEXTS[3]]) == [256]
    assert tokens == sum(embedder.count_tokens(list(reference.TEXTS)))


def test_a_text_gets_the_same_embedding_alone_and_padded_in_a_batch(embedder):
    alone, _ = embedder.embed([reference.TEXTS[2]])
    batch, _ = embedder.embed([reference.TEXTS[0], reference.TEXTS[2], reference.TEXTS[3]])
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)


def test_a_shorter_token_limit_truncates_sooner():
    short = Embedder(packaged_model_dir(), max_tokens=16)
    assert short.count_tokens([reference.TEXTS[3]]) == [16]
    with pytest.raises(ModelError, match="max_tokens"):
        Embedder(packaged_model_dir(), max_tokens=513)


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    header, data, offset = {"__metadata__": {"format": "test"}}, b"", 0
    for name, array in tensors.items():
        raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
        dtype = {"float32": "F32", "int64": "I64"}[array.dtype.name]
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        data += raw
        offset += len(raw)
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_the_weights_reader_reads_tensors_by_name(tmp_path):
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[7, 8]], dtype=np.int64)
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors({"layer.weight": matrix, "ids": ids}))
    tensors = weights.load(path)
    assert sorted(tensors) == ["ids", "layer.weight"]
    np.testing.assert_array_equal(tensors["layer.weight"], matrix)
    np.testing.assert_array_equal(tensors["ids"], ids)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda data: data[:4], "too short"),
        (lambda data: struct.pack("<Q", 10**9) + data[8:], "does not fit"),
        (lambda data: data[:8] + b"{" * (len(data) - 8), "not JSON"),
        (lambda data: data[:-4], "offsets"),
    ],
    ids=["short", "header-length", "header-json", "truncated-tensor"],
)
def test_the_weights_reader_refuses_a_broken_file(tmp_path, mangle, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(mangle(_safetensors({"w": np.ones((4, 4), dtype=np.float32)})))
    with pytest.raises(weights.WeightsError, match=message):
        weights.load(path)


def test_a_model_dir_without_the_files_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"config\.json"):
        Embedder(tmp_path)
