"""A real websocket client of ``/ws/chat/`` for tests (the ``websockets`` library), which checks every
event it receives against the published JSON Schema — so every websocket test is also a contract test."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import websockets
from jsonschema import Draft202012Validator

from business_project.chat.events import EVENTS_SCHEMA_PATH, PROTOCOL

EVENT_VALIDATOR = Draft202012Validator(json.loads(EVENTS_SCHEMA_PATH.read_text()))
TIMEOUT = 10.0


def check_event(event: dict[str, Any]) -> dict[str, Any]:
    errors = sorted(EVENT_VALIDATOR.iter_errors(event), key=lambda e: list(e.path))
    assert not errors, f"event breaks chat-events.schema.json: {event!r}: {[e.message for e in errors]}"
    return event


@dataclass
class ChatSocket:
    socket: Any
    received: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.socket.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def event(self, *, timeout: float = TIMEOUT, skip_heartbeats: bool = True) -> dict[str, Any]:
        while True:
            raw = await asyncio.wait_for(self.socket.recv(), timeout)
            event = check_event(json.loads(raw))
            self.received.append(event)
            if skip_heartbeats and event["type"] == "heartbeat":
                continue
            return event

    async def until_end(self, message_id: str, *, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        """Events of ``message_id`` up to and including its message_end (others are kept in received)."""
        events = []
        while True:
            event = await self.event(timeout=timeout)
            if event.get("message_id") != message_id:
                continue
            events.append(event)
            if event["type"] == "message_end":
                return events

    async def close(self) -> None:
        await self.socket.close()


async def open_chat(
    server,
    *,
    cookie: str | None = None,
    token: str | None = None,
    send_as: str = "header",
    origin: str | None = "same",
    subprotocols: list[str] | None = None,
) -> ChatSocket:
    headers = {}
    if cookie:
        headers["Cookie"] = cookie
    protocols = list(subprotocols) if subprotocols is not None else [PROTOCOL]
    if token and send_as == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif token:
        protocols.append(f"autobot.token.{token}")
    socket = await websockets.connect(
        f"{server.ws_url}/ws/chat/",
        additional_headers=headers,
        origin=server.http_url if origin == "same" else origin,
        subprotocols=protocols or None,
        open_timeout=TIMEOUT,
    )
    return ChatSocket(socket)


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [event["seq"] for event in events]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["text"] for event in events if event["type"] == "delta")
