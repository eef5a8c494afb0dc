"""``/ws/chat/``: the chat websocket (protocol: docs/chat-protocol.md).

A thin entry point: each client frame is checked (``frames.py``), handed to one service and to
``realtime``, and answered with events. Events of a message come from its buffer (``realtime.events_read``)
through one forwarding task per message, so what a socket sends is exactly the buffer's order. A bad frame
is answered with an ``error`` event and the socket stays open; closing the socket never stops a
generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from rest_framework.exceptions import ValidationError

from business_project.accounts.choices import Scope
from business_project.chat import events, hotpath, realtime, selectors, services
from business_project.chat.choices import MessageStatus
from business_project.chat.frames import CLIENT_REF_MAX_LENGTH, FRAME_SERIALIZERS
from business_project.chat.quotas import QuotaExceeded
from service_kit.errors import ServiceError

logger = logging.getLogger(__name__)

# The database work of other frames runs in the loop's thread pool, each thread with its own connection
# (hotpath.in_thread); nothing relies on the order of two frames' database work: each runs in its own
# transaction, and a generation starts only after its admission commits.
db = hotpath.in_thread

# Close codes (4000-4999 are the application's): no or a refused credential, a credential without the
# scope to read chats.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403

FRAME_SCOPES = {"send": Scope.CHAT_WRITE, "stop": Scope.CHAT_WRITE, "regenerate": Scope.CHAT_WRITE}


def _iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class ChatConsumer(AsyncWebsocketConsumer):
    # No channel of its own: events come from the message buffers and stops go to the generation's own
    # group (realtime.py), so nothing is ever sent to a chat socket's channel. Without one, a socket
    # costs no channel-layer receive (a Redis BZPOPMIN loop shared by every socket of the process, whose
    # failure ends the socket that happens to be reading) and less memory while it sits idle.
    channel_layer_alias = None

    async def connect(self):
        self.forwarding: dict[str, asyncio.Task] = {}
        self.heartbeat: asyncio.Task | None = None
        offered = self.scope.get("subprotocols") or []
        # Accept first, then close with a code the client can read (a refused handshake only says 403).
        await self.accept(events.PROTOCOL if events.PROTOCOL in offered else None)
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(
                code=CLOSE_UNAUTHENTICATED, reason=self.scope.get("auth_error") or "Sign in first."
            )
            return
        self.user = user
        self.scopes = self.scope.get("auth_scopes") or frozenset()
        if Scope.CHAT_READ not in self.scopes:
            await self.close(code=CLOSE_FORBIDDEN, reason="This credential may not read chats.")
            return
        self.heartbeat = asyncio.ensure_future(self._heartbeats())

    async def disconnect(self, code):
        # Only this socket's reading stops; generations go on for a later resume.
        tasks = [*getattr(self, "forwarding", {}).values(), getattr(self, "heartbeat", None)]
        for task in tasks:
            if task is not None:
                task.cancel()

    # ----------------------------------------------------------------------------------------------
    # Frames

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            await self._error(events.MALFORMED_JSON, "Frames are JSON text, not binary.")
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            await self._error(events.MALFORMED_JSON, "The frame is not valid JSON.")
            return
        if not isinstance(frame, dict):
            await self._error(events.INVALID_FRAME, "A frame is a JSON object with a type.")
            return
        client_ref = frame.get("client_ref")
        if not isinstance(client_ref, str) or len(client_ref) > CLIENT_REF_MAX_LENGTH:
            client_ref = None
        frame_type = frame.get("type")
        serializer_class = FRAME_SERIALIZERS.get(frame_type) if isinstance(frame_type, str) else None
        if serializer_class is None:
            known = ", ".join(FRAME_SERIALIZERS)
            await self._error(
                events.UNKNOWN_FRAME_TYPE,
                f"Unknown frame type {str(frame_type)[:40]!r}; known: {known}.",
                client_ref,
            )
            return
        try:
            required = FRAME_SCOPES.get(frame_type)
            if required is not None and required not in self.scopes:
                raise ServiceError("This credential may not change chats.", code="permission_denied")
            serializer = serializer_class(data=frame)
            serializer.is_valid(raise_exception=True)
            await getattr(self, f"frame_{frame_type}")(serializer.validated_data, client_ref)
        except ValidationError as exc:
            fields = {name: [str(m) for m in messages] for name, messages in exc.detail.items()}
            await self._error(events.INVALID_FRAME, "The frame is not valid.", client_ref, fields=fields)
        except QuotaExceeded as exc:
            await self._error(
                exc.default_code,
                str(exc.detail),
                client_ref,
                reset_at=_iso(exc.reset_at),
                retry_after=exc.wait,
            )
        except ServiceError as exc:
            codes = exc.get_codes()
            await self._error(
                codes if isinstance(codes, str) else exc.default_code, str(exc.detail), client_ref
            )
        except Exception:
            logger.exception("chat: a %s frame failed", frame_type)
            await self._error(events.INTERNAL_ERROR, "The server failed to handle the frame.", client_ref)

    async def frame_send(self, data, client_ref):
        plan = await hotpath.message_send(
            user=self.user,
            content=data["content"],
            conversation_id=data.get("conversation_id"),
            provider=data.get("provider"),
            model=data.get("model"),
            client_ref=client_ref,
        )
        await realtime.generation_start(plan)
        self._forward(plan.message_id, after_seq=0)

    async def frame_regenerate(self, data, client_ref):
        plan = await db(services.message_regenerate)(
            user=self.user, message_id=data["message_id"], client_ref=client_ref
        )
        await realtime.generation_start(plan)
        self._forward(plan.message_id, after_seq=0)

    async def frame_stop(self, data, client_ref):
        message = await self._message(data["message_id"])
        if message.status == MessageStatus.STREAMING:
            await realtime.generation_stop(str(message.pk))
        # Otherwise it has ended already: its message_end says how.

    async def frame_resume(self, data, client_ref):
        message = await self._message(data["message_id"])
        message_id = str(message.pk)
        if message_id in self.forwarding:
            return  # this socket is receiving that message already, gap-free
        self._forward(message_id, after_seq=data["after_seq"], client_ref=client_ref)

    async def _message(self, message_id):
        message = await db(selectors.message_get)(owner=self.user, message_id=message_id)
        if message is None:
            raise services.ChatNotFound("No such message.")
        return message

    # ----------------------------------------------------------------------------------------------
    # Events out

    def _forward(self, message_id: str, *, after_seq: int, client_ref: str | None = None) -> None:
        task = asyncio.ensure_future(self._forward_events(message_id, after_seq, client_ref))
        self.forwarding[message_id] = task
        task.add_done_callback(lambda _: self.forwarding.pop(message_id, None))

    async def _forward_events(self, message_id: str, after_seq: int, client_ref: str | None) -> None:
        try:
            await realtime.events_forward(message_id, after_seq, self._send_event)
        except realtime.BufferExpired:
            await self._error(
                events.BUFFER_EXPIRED,
                "The events of this message are no longer kept; read the message over REST.",
                client_ref,
                message_id=message_id,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("chat: forwarding the events of message %s failed", message_id)
            with contextlib.suppress(Exception):
                await self._error(
                    events.INTERNAL_ERROR,
                    "The events of this message stopped.",
                    client_ref,
                    message_id=message_id,
                )

    def _send_event(self, event):
        # The server's send itself, not through ``self.send`` and its two layers of coroutines: this
        # runs once per token (the event's text is its JSON already).
        return self.base_send({"type": "websocket.send", "text": event.data})

    async def _heartbeats(self) -> None:
        interval = settings.CHAT_HEARTBEAT_INTERVAL
        while True:
            await asyncio.sleep(interval)
            await self.send(text_data=events.encode(events.heartbeat()))

    async def _error(self, code: str, message: str, client_ref: str | None = None, **extra) -> None:
        await self.send(
            text_data=events.encode(events.error(code=code, message=message, client_ref=client_ref, **extra))
        )
