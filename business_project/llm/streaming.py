"""One streaming call to one provider: ``start_attempt`` connects and waits for the first token;
``LlmStream`` then hands out the rest. The failover over a chain is ``services.open_stream``.

Per token the work is: one read from the socket (httpx), splitting lines, one ``json.loads``, one
``TextDelta``. No database, no logging, no allocation of a task.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from business_project.llm import clients
from business_project.llm.chain import ModelConfig, ProviderConfig
from business_project.llm.events import ProviderRef, StreamBroken, StreamEnd, StreamEvent, TextDelta, Usage

# Status codes that say the request itself was refused (too long, malformed): not the provider's fault,
# so they fail over without counting against its circuit breaker.
REQUEST_REJECTED_STATUSES = frozenset({400, 413, 422})
# After the last event, how long the rest of the body may take before the connection is dropped instead.
DRAIN_SECONDS = 1.0

OnBroken = Callable[[ProviderConfig, str], Awaitable[None]]


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


class LlmStream:
    """An answer streaming from one provider: ``async for event in stream`` yields ``TextDelta`` then
    exactly one ``StreamEnd``; a failure raises ``StreamBroken``. ``await stream.aclose()`` stops it and
    closes the HTTP connection (the server sees the client go); iteration then ends without a
    ``StreamEnd``. After the ``StreamEnd`` the connection goes back to the pool by itself; a caller
    that stops before it calls ``aclose()`` (or uses ``async with stream:``).

    Attributes: ``provider`` (``ProviderRef``: id, name, kind), ``model``, ``time_to_first_token``
    (seconds from ``open_stream``), ``attempts`` (the providers given up before this one).
    """

    def __init__(
        self,
        *,
        config: ProviderConfig,
        model: str,
        response: httpx.Response,
        chunks: AsyncIterator[bytes],
        parser: clients.NdjsonParser | clients.SseParser,
        pending: deque[StreamEvent | clients.RawEnd],
        started: float,
        time_to_first_token: float,
        prompt_estimate: int,
        on_broken: OnBroken,
        lease: clients.ClientLease,
    ) -> None:
        self.provider = ProviderRef(id=config.id, name=config.name, kind=config.kind)
        self.model = model
        self.time_to_first_token = time_to_first_token
        self.attempts: tuple = ()
        self._config = config
        self._response = response
        self._chunks = chunks
        self._parser = parser
        self._pending = pending
        self._started = started
        self._prompt_estimate = prompt_estimate
        self._on_broken = on_broken
        self._done = False
        self._closed = False
        self._release_task: asyncio.Task | None = None
        self._lease = lease

    def __repr__(self) -> str:
        return f"LlmStream(provider={self.provider.name!r}, model={self.model!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> LlmStream:
        return self

    async def __anext__(self) -> StreamEvent:
        pending = self._pending
        while not pending:
            if self._done or self._closed:
                release = self._release_task
                if release is not None and not release.done():
                    await release  # normally done already: the end of the body came with the last event
                raise StopAsyncIteration
            try:
                try:
                    chunk = await self._chunks.__anext__()
                except StopAsyncIteration:
                    pending.extend(self._parser.finish())
                    self._done = True
                else:
                    pending.extend(self._parser.feed(chunk))
            except (httpx.HTTPError, clients.ProtocolError, clients.ServerReportedError) as exc:
                if self._closed:  # aclose() from another task while a read was waiting
                    raise StopAsyncIteration from None
                await self._break(exc)
        event = pending.popleft()
        if type(event) is TextDelta:
            return event
        return self._end(event)

    def _end(self, raw: clients.RawEnd) -> StreamEnd:
        self._done = True
        self._pending.clear()
        # The rest of the body is read in the background, so the connection goes back to the pool even
        # when the caller stops iterating at the end event.
        self._release_task = asyncio.get_running_loop().create_task(self._release())
        if raw.prompt_tokens is not None and raw.completion_tokens is not None:
            usage = Usage(raw.prompt_tokens, raw.completion_tokens)
        else:
            usage = Usage(
                raw.prompt_tokens if raw.prompt_tokens is not None else self._prompt_estimate,
                raw.completion_tokens if raw.completion_tokens is not None else self._parser.chunks,
                estimated=True,
            )
        return StreamEnd(raw.stop_reason, usage, time.perf_counter() - self._started)

    async def _break(self, exc: Exception) -> None:
        if isinstance(exc, clients.ProtocolError):
            reason = f"garbage: {exc}"
        elif isinstance(exc, clients.ServerReportedError):
            reason = clients.scrub(f"the server reported: {exc}", [self._config.api_key])
        else:
            reason = clients.describe_exception(exc, [self._config.api_key])
        self._done = True
        await self._close_transport()
        await self._on_broken(self._config, reason)
        raise StreamBroken(provider=self.provider, model=self.model, reason=reason) from None

    async def _release(self) -> None:
        """After the end: read what is left of the body (the chunked terminator, normally there already)
        so the connection goes back to the pool, then close the response."""
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for _ in self._chunks:
                    pass
        except (TimeoutError, httpx.HTTPError):
            pass  # closing below drops the connection instead
        finally:
            await self._close_transport()

    async def _close_transport(self) -> None:
        if self._closed:
            return
        self._closed = True
        # An unfinished response closes its connection instead of returning it to the pool.
        try:
            await self._response.aclose()
        finally:
            self._lease.release()

    async def aclose(self) -> None:
        """Stop: cancel the upstream request now. Safe to call more than once, and after the end."""
        self._done = True
        self._pending.clear()
        release = self._release_task
        if release is not None and not release.done():
            release.cancel()
        await self._close_transport()

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
    in the stream, silence past ``first_token_timeout``. The response is closed on every failure, also
    when the caller is cancelled.
    """
    lease = clients.client_lease()
    client = lease.client
    merged = {**config.params, **(model_config.params if model_config else {}), **(params or {})}
    body = clients.chat_body(
        kind=config.kind,
        model=model,
        messages=messages,
        params=merged,
        context_window=model_config.context_window if model_config else None,
    )
    timeout = httpx.Timeout(
        connect=config.connect_timeout,
        read=config.read_timeout,
        write=config.connect_timeout,
        pool=config.connect_timeout,
    )
    request = clients.build_chat_request(
        client, kind=config.kind, base_url=config.base_url, api_key=config.api_key, body=body, timeout=timeout
    )
    parser = clients.new_parser(config.kind)
    pending: deque[StreamEvent | clients.RawEnd] = deque()
    response: httpx.Response | None = None
    secrets = [config.api_key]
    try:
        async with asyncio.timeout(config.first_token_timeout):
            response = await client.send(request, stream=True)
            if response.status_code >= 400:
                reason = await clients.read_error(response, secrets)
                raise AttemptFailed(reason, counted=response.status_code not in REQUEST_REJECTED_STATUSES)
            chunks = response.aiter_bytes()
            while not pending:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    pending.extend(parser.finish())
                    break
                pending.extend(parser.feed(chunk))
    except AttemptFailed:
        await _close(response)
        raise
    except TimeoutError:
        await _close(response)
        raise AttemptFailed(f"no first token within {config.first_token_timeout:g} s") from None
    except httpx.HTTPError as exc:
        await _close(response)
        raise AttemptFailed(clients.describe_exception(exc, secrets)) from None
    except clients.ProtocolError as exc:
        await _close(response)
        raise AttemptFailed(f"garbage: {exc}") from None
    except clients.ServerReportedError as exc:
        await _close(response)
        raise AttemptFailed(clients.scrub(f"the server reported: {exc}", secrets)) from None
    except BaseException:
        await _close(response)  # cancelled while waiting: the upstream request goes too
        raise
    finally:
        if response is None or response.is_closed:
            lease.release()  # failed: the stream that would have released it does not exist
    return LlmStream(
        config=config,
        model=model,
        response=response,
        chunks=chunks,
        parser=parser,
        pending=pending,
        started=started,
        time_to_first_token=time.perf_counter() - started,
        prompt_estimate=estimate_prompt_tokens(messages),
        on_broken=on_broken,
        lease=lease,
    )


async def _close(response: httpx.Response | None) -> None:
    if response is not None:
        await asyncio.shield(response.aclose())
