"""The per-message event buffer: every event of a message, in ``seq`` order, for its lifetime.

The generator of a message publishes each event here; every reader — the websocket that asked for the
message, a websocket that reconnects and resumes, an SSE client — reads from here, from the ``seq`` it
has. Replay and live events come from one ordered log, so a reader gets each event exactly once, with no
gap and no duplicate, whichever process generates and whichever process reads.

- **Redis** (production; whenever ``CHAT_EVENT_BUFFER_REDIS_URL`` or the channel layer's Redis is
  configured): one Redis Stream per message whose entry ids are ``<seq>-0``, read with ``XREAD BLOCK``
  after ``<after_seq>-0``; the key expires ``CHAT_EVENT_BUFFER_TTL`` seconds after its last write.
- **Memory** (only when no Redis is configured: the one-process embedded mode): the same semantics in
  this process.

Events are stored as their JSON text, so a reader forwards them without decoding and encoding again.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from django.conf import settings

from business_project.chat.choices import EventType

READ_BLOCK_MS = 10_000
REDIS_MAX_CONNECTIONS = 2000  # one per reader blocked in XREAD, plus the writers
END = EventType.MESSAGE_END.value


class BufferExpired(Exception):
    """The message has no buffer (never started here, or expired): its events cannot be replayed."""


@dataclass(frozen=True, slots=True)
class BufferedEvent:
    seq: int
    type: str
    data: str  # the event as JSON


# --------------------------------------------------------------------------------------------------
# Redis


class RedisEventBuffer:
    def __init__(self, url: str, *, prefix: str, ttl: int) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url(url, max_connections=REDIS_MAX_CONNECTIONS)
        self.prefix = prefix
        self.ttl = ttl

    def key(self, message_id: str) -> str:
        return f"{self.prefix}:chat-events:{message_id}"

    async def publish(self, message_id: str, event: BufferedEvent) -> None:
        key = self.key(message_id)
        fields = {"t": event.type, "d": event.data}
        if event.seq == 1 or event.type == END:
            # The first and last events set the lifetime; checkpoints (touch) extend it in between.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, fields, id=f"{event.seq}-0")
                pipe.expire(key, self.ttl)
                await pipe.execute()
        else:
            await self.redis.xadd(key, fields, id=f"{event.seq}-0")

    async def touch(self, message_id: str) -> None:
        await self.redis.expire(self.key(message_id), self.ttl)

    async def exists(self, message_id: str) -> bool:
        return bool(await self.redis.exists(self.key(message_id)))

    async def read(self, message_id: str, after_seq: int = 0) -> AsyncIterator[BufferedEvent]:
        key = self.key(message_id)
        if not await self.redis.exists(key):
            raise BufferExpired(message_id)
        last_id = f"{after_seq}-0"
        while True:
            answer = await self.redis.xread({key: last_id}, count=500, block=READ_BLOCK_MS)
            if not answer:
                if not await self.redis.exists(key):
                    raise BufferExpired(message_id)
                continue
            for entry_id, fields in answer[0][1]:
                last_id = entry_id
                event = BufferedEvent(
                    seq=int(entry_id.split(b"-", 1)[0]),
                    type=fields[b"t"].decode(),
                    data=fields[b"d"].decode(),
                )
                yield event
                if event.type == END:
                    return

    async def close(self) -> None:
        await self.redis.aclose()


# --------------------------------------------------------------------------------------------------
# Memory (no Redis configured)


@dataclass
class _Log:
    events: list[BufferedEvent] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    expires_at: float = 0.0


class MemoryEventBuffer:
    def __init__(self, *, ttl: int) -> None:
        self.ttl = ttl
        self.logs: dict[str, _Log] = {}

    def _live(self, message_id: str) -> _Log | None:
        log = self.logs.get(message_id)
        if log is not None and log.expires_at < time.monotonic():
            del self.logs[message_id]
            return None
        return log

    def _sweep(self) -> None:
        now = time.monotonic()
        for message_id in [m for m, log in self.logs.items() if log.expires_at < now]:
            del self.logs[message_id]

    async def publish(self, message_id: str, event: BufferedEvent) -> None:
        if event.seq == 1:
            self._sweep()
            self.logs[message_id] = _Log(expires_at=time.monotonic() + self.ttl)
        log = self._live(message_id)
        if log is None:
            raise BufferExpired(message_id)
        log.expires_at = time.monotonic() + self.ttl
        async with log.changed:
            log.events.append(event)
            log.changed.notify_all()

    async def touch(self, message_id: str) -> None:
        log = self._live(message_id)
        if log is not None:
            log.expires_at = time.monotonic() + self.ttl

    async def exists(self, message_id: str) -> bool:
        return self._live(message_id) is not None

    async def read(self, message_id: str, after_seq: int = 0) -> AsyncIterator[BufferedEvent]:
        log = self._live(message_id)
        if log is None:
            raise BufferExpired(message_id)
        index = sum(1 for event in log.events if event.seq <= after_seq)
        while True:
            while index < len(log.events):
                event = log.events[index]
                index += 1
                yield event
                if event.type == END:
                    return
            async with log.changed:
                await log.changed.wait_for(lambda seen=index: seen < len(log.events))

    async def close(self) -> None:
        self.logs.clear()


# --------------------------------------------------------------------------------------------------
# The buffer of this process (one per event loop: asyncio objects and Redis connections belong to one)

_buffers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisEventBuffer | MemoryEventBuffer] = (
    weakref.WeakKeyDictionary()
)


def buffer_redis_url() -> str:
    """``CHAT_EVENT_BUFFER_REDIS_URL``, else the Redis of the channel layer, else "" (memory)."""
    if settings.CHAT_EVENT_BUFFER_REDIS_URL:
        return settings.CHAT_EVENT_BUFFER_REDIS_URL
    layer = settings.CHANNEL_LAYERS.get("default", {})
    if "redis" not in layer.get("BACKEND", "").lower():
        return ""
    hosts = layer.get("CONFIG", {}).get("hosts") or []
    if not hosts:
        return ""
    host = hosts[0]
    if isinstance(host, dict):
        return host.get("address", "")
    if isinstance(host, str):
        return host
    return f"redis://{host[0]}:{host[1]}"


def buffer_prefix() -> str:
    return settings.CHANNEL_LAYERS.get("default", {}).get("CONFIG", {}).get("prefix", "asgi")


def event_buffer() -> RedisEventBuffer | MemoryEventBuffer:
    loop = asyncio.get_running_loop()
    buffer = _buffers.get(loop)
    if buffer is None:
        url = buffer_redis_url()
        ttl = settings.CHAT_EVENT_BUFFER_TTL
        buffer = RedisEventBuffer(url, prefix=buffer_prefix(), ttl=ttl) if url else MemoryEventBuffer(ttl=ttl)
        _buffers[loop] = buffer
    return buffer
