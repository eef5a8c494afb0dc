"""The service's HTTP API: request checks, and the translation of store and speech errors to statuses."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from workers.ai_stack import speech, vectors
from workers.ai_stack.config import Config
from workers.jsonapi import ApiError, JsonServer, Request, Response, Router, bad_request

STORE_STATUS = {vectors.CollectionNotFound: 404, vectors.DimensionMismatch: 400}
SPEECH_STATUS = {speech.Busy: 503, speech.SpeechUnavailable: 503}
DEFAULT_TOP_K = 10


def _refuse_unknown(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(
            400,
            "bad_request",
            f"unknown fields {unknown}",
            fields={name: ["unknown field"] for name in unknown},
        )


def _store_error(exc: vectors.StoreError) -> ApiError:
    status = STORE_STATUS.get(type(exc), 400)
    return ApiError(
        status, exc.code, exc.message, fields={exc.field_name: [exc.message]} if exc.field_name else None
    )


class AiStackService:
    def __init__(self, config: Config, store: vectors.VectorStore, synthesizer: speech.Synthesizer) -> None:
        self.config = config
        self.store = store
        self.synthesizer = synthesizer

    def router(self) -> Router:
        router = Router()
        router.add("GET", "/health", self.health)
        router.add("GET", "/v1/collections", self.collection_list)
        router.add("GET", "/v1/collections/{name}", self.collection_get)
        router.add("DELETE", "/v1/collections/{name}", self.collection_delete)
        router.add("PUT", "/v1/collections/{name}/points", self.points_upsert)
        router.add("POST", "/v1/collections/{name}/points/delete", self.points_delete)
        router.add("POST", "/v1/collections/{name}/query", self.query)
        router.add("POST", "/v1/tts", self.tts)
        return router

    # --- health -------------------------------------------------------------------------------------------

    def health(self, request: Request) -> Response:
        try:
            store = {"ok": True, "collections": self.store.ping()}
        except Exception as exc:  # any failure of the file is what this reports
            store = {"ok": False, "error": str(exc)}
        tts = {
            "ok": self.synthesizer.available(),
            "program": self.synthesizer.program,
            "voices": list(self.synthesizer.voices),
        }
        healthy = store["ok"] and tts["ok"]
        return Response.json(
            {"status": "ok" if healthy else "degraded", "vector_store": store, "tts": tts},
            200 if healthy else 503,
        )

    # --- collections --------------------------------------------------------------------------------------

    def collection_list(self, request: Request) -> Response:
        return Response.json({"collections": self.store.collection_list()})

    def collection_get(self, request: Request) -> Response:
        try:
            return Response.json(self.store.collection_get(request.params["name"]))
        except vectors.StoreError as exc:
            raise _store_error(exc) from None

    def collection_delete(self, request: Request) -> Response:
        try:
            deleted = self.store.collection_delete(request.params["name"])
        except vectors.StoreError as exc:
            raise _store_error(exc) from None
        return Response.json({"collection": request.params["name"], "deleted": deleted})

    # --- points -------------------------------------------------------------------------------------------

    def points_upsert(self, request: Request) -> Response:
        body = request.json()
        _refuse_unknown(body, {"ids", "vectors", "metadata"})
        ids = self._ids(body)
        matrix = self._matrix(body.get("vectors"), rows=len(ids))
        metadata = body.get("metadata")
        if metadata is None:
            metadata = [{} for _ in ids]
        if not isinstance(metadata, list) or len(metadata) != len(ids):
            raise bad_request("metadata must be a list of objects, one per id", field_name="metadata")
        for index, item in enumerate(metadata):
            if not isinstance(item, dict):
                raise bad_request(f"metadata[{index}] must be a JSON object", field_name=f"metadata[{index}]")
            size = len(json.dumps(item, separators=(",", ":")))
            if size > self.config.max_metadata_bytes:
                raise ApiError(
                    413,
                    "metadata_too_large",
                    f"metadata[{index}] has {size} bytes; at most {self.config.max_metadata_bytes}",
                    fields={f"metadata[{index}]": [f"at most {self.config.max_metadata_bytes} bytes"]},
                )
        name = request.params["name"]
        try:
            count = self.store.upsert(name, ids, matrix, metadata)
        except vectors.StoreError as exc:
            raise _store_error(exc) from None
        return Response.json({"collection": name, "upserted": len(ids), "count": count})

    def points_delete(self, request: Request) -> Response:
        body = request.json()
        _refuse_unknown(body, {"ids"})
        ids = self._ids(body)
        try:
            deleted = self.store.delete(request.params["name"], ids)
        except vectors.StoreError as exc:
            raise _store_error(exc) from None
        return Response.json({"collection": request.params["name"], "deleted": deleted})

    def query(self, request: Request) -> Response:
        body = request.json()
        _refuse_unknown(body, {"vector", "top_k", "with_metadata"})
        vector = self._matrix([body["vector"]] if "vector" in body else None, rows=1, field_name="vector")[0]
        top_k = body.get("top_k", DEFAULT_TOP_K)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.config.max_top_k:
            raise bad_request(f"top_k must be an integer 1..{self.config.max_top_k}", field_name="top_k")
        with_metadata = body.get("with_metadata", True)
        if not isinstance(with_metadata, bool):
            raise bad_request("with_metadata must be true or false", field_name="with_metadata")
        try:
            matches = self.store.query(
                request.params["name"], vector, top_k=top_k, with_metadata=with_metadata
            )
        except vectors.StoreError as exc:
            raise _store_error(exc) from None
        results = []
        for match in matches:
            result: dict[str, Any] = {"id": match.id, "score": match.score}
            if with_metadata:
                result["metadata"] = match.metadata
            results.append(result)
        return Response.json({"collection": request.params["name"], "results": results})

    def _ids(self, body: dict[str, Any]) -> list[str]:
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids:
            raise bad_request("ids must be a non-empty list of strings", field_name="ids")
        if len(ids) > self.config.max_points_per_request:
            raise ApiError(
                413,
                "too_many_points",
                f"{len(ids)} points in one request; at most {self.config.max_points_per_request}",
                fields={"ids": [f"at most {self.config.max_points_per_request}"]},
            )
        for index, point_id in enumerate(ids):
            if not isinstance(point_id, str) or not 0 < len(point_id) <= vectors.MAX_ID_LENGTH:
                raise bad_request(
                    f"ids[{index}] must be a string of 1..{vectors.MAX_ID_LENGTH} characters",
                    field_name=f"ids[{index}]",
                )
        if len(set(ids)) != len(ids):
            raise bad_request("ids must not repeat within one request", field_name="ids")
        return ids

    def _matrix(self, value: Any, *, rows: int, field_name: str = "vectors") -> np.ndarray:
        """``value`` as a float32 matrix of ``rows`` finite, non-zero vectors of at most max_dimensions."""
        what = "a list of numbers" if field_name == "vector" else "a list of equally long lists of numbers"
        if not isinstance(value, list) or len(value) != rows:
            per_id = ", one per id" if field_name == "vectors" else ""
            raise bad_request(f"{field_name} must be {what}{per_id}", field_name=field_name)
        try:
            raw = np.asarray(value)  # numbers only: strings, booleans or nulls give another dtype
        except ValueError:
            raise bad_request(f"{field_name} must all have the same length", field_name=field_name) from None
        if raw.ndim != 2 or raw.dtype.kind not in "iuf" or raw.shape[1] == 0:
            raise bad_request(f"{field_name} must be {what}", field_name=field_name)
        if any(isinstance(number, bool) for row in value for number in row):  # numpy would take true as 1
            raise bad_request(f"{field_name} must be {what}, not booleans", field_name=field_name)
        if raw.shape[1] > self.config.max_dimensions:
            raise bad_request(
                f"{raw.shape[1]} dimensions; at most {self.config.max_dimensions}", field_name=field_name
            )
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
            matrix = raw.astype(np.float32)
        if not np.isfinite(matrix).all():
            raise bad_request(f"{field_name} must hold finite numbers (float32 range)", field_name=field_name)
        if not np.linalg.norm(matrix, axis=1).all():
            raise bad_request(
                f"{field_name}: a zero vector has no direction to compare", field_name=field_name
            )
        return matrix

    # --- speech -------------------------------------------------------------------------------------------

    def tts(self, request: Request) -> Response:
        body = request.json()
        _refuse_unknown(body, {"text", "voice", "speed"})
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("text must be a non-empty string", field_name="text")
        if len(text) > self.config.tts_max_chars:
            raise ApiError(
                413,
                "text_too_long",
                f"text has {len(text)} characters; at most {self.config.tts_max_chars}",
                fields={"text": [f"at most {self.config.tts_max_chars} characters"]},
            )
        voice = body.get("voice", self.config.tts_default_voice)
        if voice not in self.synthesizer.voices:
            raise bad_request(f"voice must be one of {list(self.synthesizer.voices)}", field_name="voice")
        speed = body.get("speed", speech.DEFAULT_SPEED)
        if (
            isinstance(speed, bool)
            or not isinstance(speed, int)
            or not speech.MIN_SPEED <= speed <= speech.MAX_SPEED
        ):
            raise bad_request(
                f"speed must be an integer {speech.MIN_SPEED}..{speech.MAX_SPEED} (words per minute)",
                field_name="speed",
            )
        try:
            wav = self.synthesizer.synthesize(
                text, voice=voice, speed=speed, queue_timeout=self.config.queue_timeout_seconds
            )
        except speech.SpeechError as exc:
            raise ApiError(SPEECH_STATUS.get(type(exc), 502), exc.code, str(exc)) from None
        return Response(wav, content_type="audio/wav")


def make_server(config: Config, store: vectors.VectorStore, synthesizer: speech.Synthesizer) -> JsonServer:
    service = AiStackService(config, store, synthesizer)
    return JsonServer(
        (config.bind, config.port),
        service.router(),
        name="autobot-ai-stack",
        max_body_bytes=config.max_body_bytes,
    )


def make_synthesizer(config: Config) -> speech.Synthesizer:
    return speech.Synthesizer(
        program=config.espeak,
        voices=config.tts_voices,
        timeout_seconds=config.tts_timeout_seconds,
        max_concurrency=config.tts_max_concurrency,
    )
