"""The published protocol: the JSON Schemas are valid, agree with the code and the docs. (Every event the
websocket and SSE tests receive is also checked against the schema, in ``wire.check_event``.)"""

import inspect
import json
import uuid
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from business_project.chat import events, quotas, services
from business_project.chat.choices import EventType, FrameType
from business_project.chat.frames import FRAME_SERIALIZERS
from business_project.llm import events as llm_events
from service_kit.errors import ServiceError
from tests.business.chat.wire import check_event

REPO_DIR = Path(__file__).resolve().parents[3]
EVENTS_SCHEMA = json.loads(events.EVENTS_SCHEMA_PATH.read_text())
FRAMES_SCHEMA = json.loads(events.FRAMES_SCHEMA_PATH.read_text())
PROTOCOL_DOC = (REPO_DIR / "docs" / "chat-protocol.md").read_text()
ID = str(uuid.uuid4())


@pytest.mark.parametrize("schema", [EVENTS_SCHEMA, FRAMES_SCHEMA])
def test_the_schemas_are_valid_json_schema(schema):
    Draft202012Validator.check_schema(schema)


def test_every_event_type_is_in_the_schema_and_the_docs():
    assert {ref["$ref"].split("/")[-1] for ref in EVENTS_SCHEMA["oneOf"]} == set(EventType.values)
    for event_type in EventType.values:
        assert f"`{event_type}`" in PROTOCOL_DOC
    for frame_type in FrameType.values:
        assert f"`{frame_type}`" in PROTOCOL_DOC
    assert set(FRAME_SERIALIZERS) == set(FrameType.values)


def _service_error_codes():
    codes = set()
    for module in (services, quotas, llm_events):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, ServiceError) and cls.__module__ == module.__name__:
                codes.add(cls.default_code)
    return codes


def test_every_error_code_the_server_sends_is_published():
    published = set(EVENTS_SCHEMA["$defs"]["error"]["properties"]["code"]["enum"])
    sent_by_the_consumer = {
        events.MALFORMED_JSON,
        events.UNKNOWN_FRAME_TYPE,
        events.INVALID_FRAME,
        events.BUFFER_EXPIRED,
        events.INTERNAL_ERROR,
        "permission_denied",
        "event_buffer_unavailable",
    }
    codes = _service_error_codes() | sent_by_the_consumer
    assert codes - published == set()
    for code in published:
        assert f"`{code}`" in PROTOCOL_DOC, code


def test_the_event_builders_follow_the_schema():
    check_event(events.message_start(message_id=ID, conversation_id=ID, parent_id=ID))
    check_event(events.delta(message_id=ID, seq=2, text="x"))
    check_event(
        events.message_end(
            message_id=ID,
            seq=3,
            status="complete",
            stop_reason="stop",
            usage={"prompt_tokens": 1, "completion_tokens": 1, "estimated": False},
            provider_id=ID,
            provider="p",
            model="m",
            time_to_first_token_ms=5,
            total_ms=9,
        )
    )
    check_event(
        events.error(code="quota_exceeded", message="m", reset_at="2026-01-01T00:00:00Z", retry_after=5)
    )
    check_event(events.heartbeat())


@pytest.mark.parametrize("text", ["x", 'quote " back\\slash', "line\nbreak\ttab\x00\x1f", "Hé ✓ 😀"])
def test_a_delta_encoded_per_token_is_the_event_the_builder_makes(text):
    encode_delta = events.delta_encoder(uuid.UUID(ID))

    encoded = encode_delta(7, text)

    assert encoded == events.encode(events.delta(message_id=ID, seq=7, text=text))
    check_event(json.loads(encoded))


@pytest.mark.parametrize(
    "event",
    [
        {"type": "delta", "message_id": ID, "seq": 2, "text": ""},
        {"type": "delta", "message_id": ID, "seq": 1, "text": "x"},
        {"type": "delta", "message_id": "nope", "seq": 2, "text": "x"},
        {"type": "message_end", "message_id": ID, "seq": 2, "status": "streaming"},
        {
            "type": "error",
            "message_id": None,
            "seq": None,
            "code": "made_up",
            "message": "m",
            "client_ref": None,
            "fields": {},
        },
        {"type": "heartbeat", "message_id": ID, "seq": None, "server_time": "2026-01-01T00:00:00Z"},
        {"type": "surprise", "message_id": None, "seq": None},
    ],
)
def test_the_schema_rejects_malformed_events(event):
    validator = Draft202012Validator(EVENTS_SCHEMA)
    assert not validator.is_valid(event)


@pytest.mark.parametrize(
    ("frame", "valid"),
    [
        ({"type": "send", "content": "hi"}, True),
        (
            {
                "type": "send",
                "content": "hi",
                "conversation_id": ID,
                "provider": "p",
                "model": "m",
                "client_ref": "r",
            },
            True,
        ),
        ({"type": "send", "content": "hi", "conversation_id": None}, True),
        ({"type": "send"}, False),
        ({"type": "send", "content": "hi", "conversation_id": "nope"}, False),
        ({"type": "send", "content": "hi", "client_ref": "x" * 101}, False),
        ({"type": "stop", "message_id": ID}, True),
        ({"type": "stop", "message_id": 12}, False),
        ({"type": "stop"}, False),
        ({"type": "regenerate", "message_id": ID}, True),
        ({"type": "resume", "message_id": ID, "after_seq": 4}, True),
        ({"type": "resume", "message_id": ID}, True),
        ({"type": "resume", "message_id": ID, "after_seq": -1}, False),
    ],
)
def test_the_frame_schema_and_the_server_agree(frame, valid):
    by_schema = Draft202012Validator(FRAMES_SCHEMA).is_valid(frame)
    by_server = FRAME_SERIALIZERS[frame["type"]](data=frame).is_valid()
    assert (by_schema, by_server) == (valid, valid)
