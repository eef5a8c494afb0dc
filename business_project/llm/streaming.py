"""One streaming call to one provider: ``start_attempt`` sends the request and waits for the first
token; ``LlmStream`` then hands out the rest. The failover over a chain is ``services.open_stream``.

The answer's bytes are parsed where they arrive (``wire.py``: in the socket's callback). A reader either
iterates (``async for event in stream``: a task wakes up per read) or follows (``await stream.follow(f)``:
each event is handed to ``f`` in that same callback, with no task wake-up per token). Per token the
work is one JSON parse (``clients.loads``) and one ``TextDelta``: no database, no logging, no task or future.
"""

from __future__ import annotations

import asyncio
import json
import time
import typing
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from business_project.llm import clients, wire
from business_project.llm.chain import ModelConfig, ProviderConfig
from business_project.llm.events import ProviderRef, StreamBroken, StreamEnd, StreamEvent, TextDelta, Usage

# Status codes that say the request itself was refused (too long, malformed): not the provider's fault,
# so they fail over without counting against its circuit breaker.
REQUEST_REJECTED_STATUSES = frozenset({400, 413, 422})
# After the last event, how long the rest of the body may take before the connection is dropped instead.
DRAIN_SECONDS = 1.0
# An iterating reader this many events behind stops the socket being read until it has caught up half.
PENDING_LIMIT = 4096

OnBroken = Callable[[ProviderConfig, str], Awaitable[None]]
# A follower is called with each event; it returns None, or an awaitable that must finish before it is
# handed the next event (meanwhile the socket is not read).
Follower = Callable[[StreamEvent], Awaitable[Any] | None]

Failure = httpx.HTTPError | clients.ProtocolError | clients.ServerReportedError


class AttemptFailed(Exception):
    """A provider failed before its first token; ``counted``: the failure is the provider's (breaker)."""

    def __init__(self, reason: str, *, counted: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.counted = counted


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """About four characters per token, plus a few per message for the chat template."""
    characters = sum(len(message.get("content") or "") for message in messages)
    return max(1, characters // 4 + 4 * len(messages))


def failure_reason(exc: Failure, secrets: list[str | None]) -> str:
    if isinstance(exc, clients.ProtocolError):
        return f"garbage: {exc}"
    if isinstance(exc, clients.ServerReportedError):
        return clients.scrub(f"the server reported: {exc}", secrets)
    return clients.describe_exception(exc, secrets)


class LlmStream:
    """An answer streaming from one provider: ``async for event in stream`` yields ``TextDelta`` then
    exactly one ``StreamEnd``; a failure raises ``StreamBroken``. ``await stream.follow(f)`` hands the
    same events to ``f`` instead, as they arrive. ``await stream.aclose()`` stops it and closes the HTTP
    connection (the server sees the client go); reading then ends without a ``StreamEnd``. After the
    ``StreamEnd`` the connection goes back to the pool by itself.

    Attributes: ``provider`` (``ProviderRef``: id, name, kind), ``model``, ``time_to_first_token``
    (seconds from ``open_stream``), ``attempts`` (the providers given up before this one).

    It is the sink of its ``wire.Exchange``: ``body``, ``end`` and ``fail`` run in the socket's callback.
    """

    def __init__(
        self,
        *,
        config: ProviderConfig,
        model: str,
        exchange: wire.Exchange,
        parser: clients.NdjsonParser | clients.SseParser,
        started: float,
        prompt_estimate: int,
        on_broken: OnBroken,
    ) -> None:
        self.provider = ProviderRef(id=config.id, name=config.name, kind=config.kind)
        self.model = model
        self.time_to_first_token: float | None = None
        self.attempts: tuple = ()
        self._config = config
        self._exchange = exchange
        self._parser = parser
        self._pending: deque[StreamEvent | clients.RawEnd] = deque()
        self._started = started
        self._prompt_estimate = prompt_estimate
        self._on_broken = on_broken
        self._failure: Failure | None = None  # what broke the stream, until a reader hears of it
        self._parsed_end = False  # the parser produced the end: the body holds nothing more for us
        self._ended = False  # the StreamEnd was handed out (or the stream broke): reading is over
        self._closed = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._follower: Follower | None = None
        self._following: asyncio.Future[None] | None = None  # follow()'s end
        self._blocked: Any = None  # the awaitable a follower asked to finish before the next event

    def __repr__(self) -> str:
        return f"LlmStream(provider={self.provider.name!r}, model={self.model!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the sink (wire.py) ---

    def body(self, data: bytes) -> None:
        if self._parsed_end or self._closed or self._failure is not None:
            return
        try:
            events = self._parser.feed(data)
        except (clients.ProtocolError, clients.ServerReportedError) as exc:
            self.fail(exc)
            return
        if events:
            if type(events[-1]) is clients.RawEnd:
                self._parsed_end = True
            self._arrived(events)

    def end(self) -> None:
        if self._parsed_end or self._closed or self._failure is not None:
            return
        try:
            events = self._parser.finish()
        except (clients.ProtocolError, clients.ServerReportedError) as exc:
            self.fail(exc)
            return
        self._parsed_end = True
        self._arrived(events)

    def fail(self, exc: Failure) -> None:
        if self._parsed_end or self._closed or self._failure is not None:
            return
        self._failure = exc
        self._exchange.close()
        self._wake()
        if self._follower is not None:
            self._drain_pending()  # hands over what came before the failure, then ends the following

    def _arrived(self, events: list) -> None:
        if self._follower is not None and self._blocked is None and not self._pending:
            for index, event in enumerate(events):
                self._hand(event)
                if self._blocked is not None:
                    self._pending.extend(events[index + 1 :])
                    break
            return
        self._pending.extend(events)
        if len(self._pending) > PENDING_LIMIT and not self._paused:
            self._paused = True
            self._exchange.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- iterating ---

    def __aiter__(self) -> LlmStream:
        return self

    async def __anext__(self) -> StreamEvent:
        pending = self._pending
        while not pending:
            if self._failure is not None and not self._closed:
                await self._break()
            if self._ended or self._closed or self._parsed_end:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = pending.popleft()
        if self._paused and len(pending) <= PENDING_LIMIT // 2:
            self._paused = False
            self._exchange.resume_reading()
        if type(event) is TextDelta:
            return event
        return self._end(event)

    async def first(self) -> None:
        """Wait for the first event (or the end, or a failure, which this raises as it came)."""
        while not self._pending:
            if self._failure is not None:
                raise self._failure
            if self._closed or self._parsed_end:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    # --- following ---

    async def follow(self, follower: Follower) -> None:
        """Hand every event (``TextDelta``s, then the ``StreamEnd``) to ``follower`` as it arrives, in the
        socket's callback. Returns after the ``StreamEnd``, or when ``aclose()`` stopped the stream;
        raises ``StreamBroken`` as iterating does, or what ``follower`` (or an awaitable it returned)
        raised, after closing the stream."""
        if self._follower is not None:
            raise RuntimeError("this stream has a follower already")
        self._follower = follower
        self._following = asyncio.get_running_loop().create_future()
        self._drain_pending()
        try:
            await self._following
        except BaseException:
            self._follower = None
            await self.aclose()
            raise
        self._follower = None
        if self._failure is not None and not self._closed:
            await self._break()

    def _hand(self, event: StreamEvent | clients.RawEnd) -> None:
        if type(event) is not TextDelta:
            event = self._end(event)
        try:
            awaiting = self._follower(event)
        except BaseException as exc:
            self._stop_following(exc)
            return
        if awaiting is not None:
            self._blocked = asyncio.ensure_future(awaiting)
            self._exchange.pause_reading()
            self._blocked.add_done_callback(self._unblocked)
        elif type(event) is StreamEnd:
            self._finish_following()

    def _unblocked(self, done: asyncio.Future) -> None:
        self._blocked = None
        if done.cancelled():
            self._stop_following(asyncio.CancelledError())
            return
        if done.exception() is not None:
            self._stop_following(done.exception())
            return
        if self._ended and self._failure is None:
            self._finish_following()  # the StreamEnd's own wait is over
            return
        self._drain_pending()
        if self._blocked is None:
            self._paused = False
            self._exchange.resume_reading()

    def _drain_pending(self) -> None:
        pending = self._pending
        while pending and self._blocked is None and self._following is not None:
            self._hand(pending.popleft())
        over = self._failure is not None or self._closed or self._ended
        if over and not pending and self._blocked is None:
            self._finish_following()

    def _finish_following(self) -> None:
        following = self._following
        if following is not None and not following.done():
            following.set_result(None)

    def _stop_following(self, exc: BaseException) -> None:
        following = self._following
        self._exchange.close()
        if following is not None and not following.done():
            following.set_exception(exc)

    # --- the end ---

    def _end(self, raw: clients.RawEnd) -> StreamEnd:
        self._ended = True
        self._pending.clear()
        if raw.prompt_tokens is not None and raw.completion_tokens is not None:
            usage = Usage(raw.prompt_tokens, raw.completion_tokens)
        else:
            usage = Usage(
                raw.prompt_tokens if raw.prompt_tokens is not None else self._prompt_estimate,
                raw.completion_tokens if raw.completion_tokens is not None else self._parser.chunks,
                estimated=True,
            )
        return StreamEnd(raw.stop_reason, usage, time.perf_counter() - self._started)

    async def _break(self) -> None:
        exc = typing.cast(Failure, self._failure)
        self._failure = None
        self._ended = True
        reason = failure_reason(exc, [self._config.api_key])
        self._close_exchange()
        await self._on_broken(self._config, reason)
        raise StreamBroken(provider=self.provider, model=self.model, reason=reason) from None

    def _close_exchange(self) -> None:
        if self._closed:
            return
        self._closed = True
        exchange = self._exchange
        if self._parsed_end and not exchange.complete and exchange.error is None:
            # Only the body's last bytes are missing (the chunked terminator): they normally follow at
            # once, and the connection can be kept; a server that does not send them loses it.
            asyncio.get_running_loop().call_later(DRAIN_SECONDS, exchange.close)
        else:
            exchange.close()

    async def aclose(self) -> None:
        """Stop: cancel the upstream request now. Safe to call more than once, and after the end."""
        self._close_exchange()
        self._pending.clear()
        self._wake()
        if self._follower is not None:
            self._drain_pending()  # nothing is pending any more: ends the following unless it waits

    async def __aenter__(self) -> LlmStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def start_attempt(
    config: ProviderConfig,
    *,
    model: str,
    model_config: ModelConfig | None,
    messages: list[dict[str, Any]],
    params: dict[str, Any] | None,
    started: float,
    on_broken: OnBroken,
) -> LlmStream:
    """Send the request to ``config`` and wait for the first token (or an end with no token).

    Raises ``AttemptFailed`` for anything before that: refused connection, HTTP error, garbage, an error
    in the stream, silence past ``first_token_timeout``. The request is closed on every failure, also
    when the caller is cancelled.
    """
    merged = {**config.params, **(model_config.params if model_config else {}), **(params or {})}
    body = clients.chat_body(
        kind=config.kind,
        model=model,
        messages=messages,
        params=merged,
        context_window=model_config.context_window if model_config else None,
    )
    timeouts = wire.Timeouts(
        connect=config.connect_timeout,
        read=config.read_timeout,
        write=config.connect_timeout,
        pool=config.connect_timeout,
    )
    secrets = [config.api_key]
    exchange: wire.Exchange | None = None
    try:
        async with asyncio.timeout(config.first_token_timeout):
            exchange = await wire.request(
                httpx.URL(clients.chat_url(config.kind, config.base_url)),
                headers=clients.chat_headers(config.kind, config.api_key),
                body=json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(),
                timeouts=timeouts,
            )
            if exchange.status >= 400:
                reason = clients.error_reason(
                    exchange.status, await exchange.read(clients.ERROR_BODY_BYTES), secrets
                )
                raise AttemptFailed(reason, counted=exchange.status not in REQUEST_REJECTED_STATUSES)
            stream = LlmStream(
                config=config,
                model=model,
                exchange=exchange,
                parser=clients.new_parser(config.kind),
                started=started,
                prompt_estimate=estimate_prompt_tokens(messages),
                on_broken=on_broken,
            )
            exchange.attach(stream)
            await stream.first()
    except AttemptFailed:
        _close(exchange)
        raise
    except TimeoutError:
        _close(exchange)
        raise AttemptFailed(f"no first token within {config.first_token_timeout:g} s") from None
    except (httpx.HTTPError, clients.ProtocolError, clients.ServerReportedError) as exc:
        _close(exchange)
        raise AttemptFailed(failure_reason(exc, secrets)) from None
    except BaseException:
        _close(exchange)  # cancelled while waiting: the upstream request goes too
        raise
    stream.time_to_first_token = time.perf_counter() - started
    return stream


def _close(exchange: wire.Exchange | None) -> None:
    if exchange is not None:
        exchange.close()
