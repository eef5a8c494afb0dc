"""The worker's HTTP API (routes and request checks); the model itself is ``model.Embedder``."""

from __future__ import annotations

import base64
import threading
from typing import Any

import numpy as np

from workers.jsonapi import ApiError, JsonServer, Request, Response, Router, bad_request
from workers.npu_worker.config import Config
from workers.npu_worker.model import MODEL_NAME, Embedder

# The names a client may ask for: ours, and the Hugging Face id of the same model.
MODEL_NAMES = {MODEL_NAME, f"sentence-transformers/{MODEL_NAME}"}
REQUEST_KEYS = {"input", "model", "encoding_format", "dimensions", "user"}
ENCODING_FORMATS = ("float", "base64")


class EmbeddingService:
    def __init__(self, config: Config, embedder: Embedder) -> None:
        self.config = config
        self.embedder = embedder
        self._turn = threading.Lock()  # one forward pass at a time: it uses every BLAS thread it has

    def router(self) -> Router:
        router = Router()
        router.add("GET", "/health", self.health)
        router.add("GET", "/v1/models", self.models)
        router.add("POST", "/v1/embeddings", self.embeddings)
        return router

    def health(self, request: Request) -> Response:
        return Response.json(
            {
                "status": "ok",
                "model": MODEL_NAME,
                "dimensions": self.embedder.dimensions,
                "max_tokens": self.embedder.max_tokens,
                "max_batch": self.config.max_batch,
            }
        )

    def models(self, request: Request) -> Response:
        return Response.json(
            {"object": "list", "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "autobot"}]}
        )

    def embeddings(self, request: Request) -> Response:
        body = request.json()
        unknown = sorted(set(body) - REQUEST_KEYS)
        if unknown:
            raise ApiError(
                400,
                "bad_request",
                f"unknown fields {unknown}",
                fields={name: ["unknown field"] for name in unknown},
            )
        texts = self._texts(body)
        model = body.get("model", MODEL_NAME)
        if model not in MODEL_NAMES:
            raise ApiError(
                404,
                "model_not_found",
                f"the model {model!r} is not served here; this worker serves {MODEL_NAME!r}",
                fields={"model": ["unknown model"]},
            )
        encoding_format = body.get("encoding_format", "float")
        if encoding_format not in ENCODING_FORMATS:
            raise bad_request(
                f"encoding_format must be one of {list(ENCODING_FORMATS)}", field_name="encoding_format"
            )
        dimensions = body.get("dimensions", self.embedder.dimensions)
        if dimensions != self.embedder.dimensions or isinstance(dimensions, bool):
            raise bad_request(
                f"this model has {self.embedder.dimensions} dimensions; it cannot return {dimensions!r}",
                field_name="dimensions",
            )
        if not self._turn.acquire(timeout=self.config.queue_timeout_seconds):
            raise ApiError(
                503, "busy", f"no turn within {self.config.queue_timeout_seconds:g} s; retry later"
            )
        try:
            vectors, tokens = self.embedder.embed(texts)
        finally:
            self._turn.release()
        return Response.json(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": index, "embedding": _encoded(vector, encoding_format)}
                    for index, vector in enumerate(vectors)
                ],
                "model": MODEL_NAME,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _texts(self, body: dict[str, Any]) -> list[str]:
        if "input" not in body:
            raise bad_request("input is required: a string or a list of strings", field_name="input")
        value = body["input"]
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts:
            raise bad_request("input must be a string or a non-empty list of strings", field_name="input")
        if len(texts) > self.config.max_batch:
            raise ApiError(
                413,
                "batch_too_large",
                f"input has {len(texts)} texts; at most {self.config.max_batch} per request",
                fields={"input": [f"at most {self.config.max_batch} texts"]},
            )
        for index, text in enumerate(texts):
            name = "input" if isinstance(value, str) else f"input[{index}]"
            if not isinstance(text, str):
                # OpenAI also takes token ids; this worker tokenises for itself.
                raise bad_request(f"{name} must be a string (token arrays are not accepted)", field_name=name)
            if not text.strip():
                raise bad_request(f"{name} is empty", field_name=name)
            if len(text) > self.config.max_input_chars:
                raise ApiError(
                    413,
                    "input_too_large",
                    f"{name} has {len(text)} characters; at most {self.config.max_input_chars}",
                    fields={name: [f"at most {self.config.max_input_chars} characters"]},
                )
        return texts


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI's API sends it
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()


def make_server(config: Config, embedder: Embedder) -> JsonServer:
    service = EmbeddingService(config, embedder)
    return JsonServer(
        (config.bind, config.port),
        service.router(),
        name="autobot-npu-worker",
        max_body_bytes=config.max_body_bytes,
    )
