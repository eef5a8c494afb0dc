"""The server events of the chat protocol, built in one place so that every transport (websocket, SSE)
sends the same shapes — the ones ``schema/chat-events.schema.json`` publishes and the contract tests
check. Every event has ``type``, ``message_id`` and ``seq``; events about no message in particular
(``heartbeat``, an error about a bad frame) carry ``null`` for both.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from business_project.chat.choices import EventType

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
EVENTS_SCHEMA_PATH = SCHEMA_DIR / "chat-events.schema.json"
FRAMES_SCHEMA_PATH = SCHEMA_DIR / "chat-frames.schema.json"
PROTOCOL = "autobot.chat.v1"

# Error codes of events about client input (the others pass through from the services and the llm app).
MALFORMED_JSON = "malformed_json"
UNKNOWN_FRAME_TYPE = "unknown_frame_type"
INVALID_FRAME = "invalid_frame"
BUFFER_EXPIRED = "buffer_expired"
INTERNAL_ERROR = "internal_error"


def _id(value) -> str | None:
    return None if value is None else str(value)


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def message_start(
    *,
    message_id,
    conversation_id,
    parent_id,
    regenerates_id=None,
    client_ref: str | None = None,
    provider_id: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    return {
        "type": EventType.MESSAGE_START.value,
        "message_id": str(message_id),
        "seq": 1,
        "conversation_id": str(conversation_id),
        "parent_id": _id(parent_id),
        "regenerates_id": _id(regenerates_id),
        "client_ref": client_ref,
        "provider_id": provider_id or None,
        "model": model or None,
        "created_at": now_iso(),
    }


def delta(*, message_id: str, seq: int, text: str) -> dict[str, Any]:
    return {"type": EventType.DELTA.value, "message_id": message_id, "seq": seq, "text": text}


def delta_encoder(message_id: str) -> Callable[[int, str], str]:
    """``encode(delta(message_id=message_id, seq=seq, text=text))`` as a function of ``seq`` and
    ``text``, with the part every delta of the message shares encoded once: a delta is encoded per
    token, and building and walking the dict was most of its cost."""
    prefix = f'{{"type":{_string(EventType.DELTA.value)},"message_id":{_string(str(message_id))},"seq":'

    def encode_delta(seq: int, text: str) -> str:
        return f'{prefix}{int(seq)},"text":{_string(text)}}}'

    return encode_delta


def message_end(
    *,
    message_id: str,
    seq: int,
    status: str,
    stop_reason: str,
    usage: dict[str, Any] | None,
    provider_id: str | None,
    provider: str | None,
    model: str | None,
    time_to_first_token_ms: int | None,
    total_ms: int | None,
) -> dict[str, Any]:
    return {
        "type": EventType.MESSAGE_END.value,
        "message_id": message_id,
        "seq": seq,
        "status": status,
        "stop_reason": stop_reason,
        "usage": usage,
        "provider_id": provider_id or None,
        "provider": provider or None,
        "model": model or None,
        "time_to_first_token_ms": time_to_first_token_ms,
        "total_ms": total_ms,
    }


def error(
    *,
    code: str,
    message: str,
    message_id=None,
    seq: int | None = None,
    client_ref: str | None = None,
    fields: dict[str, list[str]] | None = None,
    reset_at: str | None = None,
    retry_after: int | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": EventType.ERROR.value,
        "message_id": _id(message_id),
        "seq": seq,
        "code": code,
        "message": message,
        "client_ref": client_ref,
        "fields": fields or {},
    }
    if reset_at is not None:
        event["reset_at"] = reset_at
        event["retry_after"] = retry_after
    return event


def heartbeat() -> dict[str, Any]:
    return {"type": EventType.HEARTBEAT.value, "message_id": None, "seq": None, "server_time": now_iso()}


# One encoder for every event: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# How that encoder writes a string (the C function where there is one).
_string = json.encoder.encode_basestring


def encode(event: dict[str, Any]) -> str:
    return _ENCODER.encode(event)


def load_schema(path: Path = EVENTS_SCHEMA_PATH) -> dict[str, Any]:
    return json.loads(path.read_text())
