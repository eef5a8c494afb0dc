"""HTTP/1.1 for the LLM servers' streamed answers, parsed in the socket's own callback.

A streamed answer is hundreds of small pieces. Read through httpx, each piece woke a task and climbed
four layers of async generators (httpx, httpcore, h11, the network backend) before the stream parser
saw it: a quarter of the chat process's CPU per token in bench/chat_stream.py, and one event-loop turn
of latency. Here the connection's protocol parses the answer with httptools (llhttp, the parser uvicorn
uses) in ``data_received`` and hands each piece of the body to the exchange's sink there and then;
the sink (``streaming.LlmStream``) parses the events and delivers them to whoever follows the stream.

- One request at a time per connection. Connections are kept alive per event loop and origin, the most
  recently used first, for ``IDLE_SECONDS``; at most ``LLM_HTTP_MAX_KEEPALIVE_CONNECTIONS`` idle and
  ``LLM_HTTP_MAX_CONNECTIONS`` open per origin (beyond that a request waits, up to its pool timeout).
- A reused connection that fails before any byte of the answer (the server closed it while it sat idle:
  the race every keep-alive client has) gets the request once more, on a new connection.
- Timeouts: connect (TLS included), write (while the request waits for room in the socket), read (the
  longest silence while an answer is due: one timer per exchange, re-armed only when it fires), pool.
- Failures are httpx's exception types with httpx's wording, so callers, the circuit breaker and what
  users read do not depend on which client read the stream.

Only the chat requests go through here; health probes stay on httpx (``clients.py``): they are not per
token. Header values come from the provider's configuration and are refused when they hold a line break
(no header injection through an API key).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import weakref
from typing import Any, NamedTuple, Protocol

import httptools
import httpx
from django.conf import settings

logger = logging.getLogger(__name__)

IDLE_SECONDS = 30.0  # a kept-alive connection unused for longer is closed instead of reused
USER_AGENT = b"autobot-business"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORBIDDEN_IN_HEADERS = frozenset("\r\n\0")


class Timeouts(NamedTuple):
    """Seconds, or None for no limit."""

    connect: float | None
    read: float | None
    write: float | None
    pool: float | None


class Sink(Protocol):
    """Who receives an answer's body, in the socket's callback. None of these may raise."""

    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def fail(self, exc: httpx.HTTPError) -> None: ...


class Exchange:
    """One request and its answer: ``status`` and ``headers`` once ``request()`` returns; the body goes
    to the sink given to ``attach`` (what arrived before is kept and handed over first). ``close()``
    stops it: an unfinished exchange closes its connection, so the server sees the client go."""

    __slots__ = (
        "_early",
        "_sink",
        "closed",
        "complete",
        "connection",
        "error",
        "head",
        "headers",
        "received",
        "status",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = loop.create_future()  # done with the status line and headers
        self.connection: _Connection | None = None
        self.received = False  # any byte of the answer
        self.complete = False  # the whole answer
        self.error: httpx.HTTPError | None = None
        self.closed = False
        self._sink: Sink | None = None
        self._early: list[bytes] = []

    def attach(self, sink: Sink) -> None:
        self._sink = sink
        early, self._early = self._early, []
        for data in early:
            sink.body(data)
        if self.complete:
            sink.end()
        elif self.error is not None:
            sink.fail(self.error)

    async def read(self, limit: int) -> bytes:
        """The body, up to ``limit`` bytes (an error answer's, to say why); b"" when it broke off."""
        collector = _Collector(limit, asyncio.get_running_loop().create_future())
        self.attach(collector)
        return await collector.done

    def pause_reading(self) -> None:
        connection = self.connection
        if connection is not None:
            connection.pause()

    def resume_reading(self) -> None:
        connection = self.connection
        if connection is not None:
            connection.resume()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        connection = self.connection
        if connection is not None and not self.complete:
            connection.abort()

    # --- from the connection ---

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, headers
        if not self.head.done():
            self.head.set_result(None)

    def _body(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink.body(data)
        else:
            self._early.append(data)

    def _end(self) -> None:
        self.complete = True
        self.connection = None
        if self._sink is not None:
            self._sink.end()

    def _fail(self, exc: httpx.HTTPError) -> None:
        if self.complete or self.error is not None or self.closed:
            return
        self.error = exc
        self.connection = None
        if not self.head.done():
            self.head.set_exception(exc)
        elif self._sink is not None:
            self._sink.fail(exc)


class _Collector:
    __slots__ = ("done", "limit", "parts", "size")

    def __init__(self, limit: int, done: asyncio.Future[bytes]) -> None:
        self.limit, self.done = limit, done
        self.parts: list[bytes] = []
        self.size = 0

    def body(self, data: bytes) -> None:
        if self.size < self.limit:
            self.parts.append(data)
            self.size += len(data)
            if self.size >= self.limit:
                self.end()

    def end(self) -> None:
        if not self.done.done():
            self.done.set_result(b"".join(self.parts)[: self.limit])

    def fail(self, exc: httpx.HTTPError) -> None:
        self.end()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection and its parser; httptools calls the ``on_*`` methods from ``feed_data``."""

    def __init__(self, pool: _Pool, origin: tuple[str, str, int]) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.framed = False  # the answer has a length or is chunked (else it ends with the connection)
        self.informational = False  # reading a 1xx answer, which precedes the real one
        self.lost = False
        self.idle_since = 0.0
        self.last_data = 0.0
        self.read_timeout: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None

    # --- asyncio ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # bytes nobody asked for: the connection is not usable any more
            self.abort()
            return
        exchange.received = True
        self.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            logger.exception("llm: a stream's reader failed")  # a bug in a sink: never the server's fault
            self._fail(httpx.RemoteProtocolError("the answer could not be read"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP answer: {exc}"))

    def eof_received(self) -> bool:
        exchange = self.exchange
        if exchange is not None and exchange.head.done() and not self.framed and not self.informational:
            self.on_message_complete(keep_alive=False)  # an answer delimited by the end of the connection
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._stop_timer()
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            if exc is not None:
                error: httpx.HTTPError = httpx.ReadError(str(exc) or exc.__class__.__name__)
            elif not exchange.head.done():
                error = httpx.RemoteProtocolError("Server disconnected without sending a response.")
            else:
                error = httpx.RemoteProtocolError("peer closed connection without sending the whole answer")
            exchange._fail(error)
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # --- httptools ---

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or lowered == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers, self.headers = self.headers, []
        if 100 <= status < 200:  # "100 Continue" and the like: the answer follows
            self.informational = True
            return
        if self.exchange is not None:
            self.exchange._head(status, headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange._body(body)

    def on_message_complete(self, keep_alive: bool | None = None) -> None:
        if self.informational:
            self.informational = False
            self.framed = False
            return
        exchange, self.exchange = self.exchange, None
        self._stop_timer()
        self.framed = False
        if keep_alive is None:
            keep_alive = self.parser.should_keep_alive()
        if exchange is None:
            self.abort()
            return
        exchange._end()
        if keep_alive and not self.lost:
            self.resume()  # a reader that paused this answer must not leave the next one unread
            self.pool.release(self)
        else:
            self.abort()

    # --- ours ---

    async def send(self, exchange: Exchange, data: bytes, timeouts: Timeouts) -> None:
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        self.exchange = exchange
        exchange.connection = self
        transport.write(data)
        self.read_timeout = timeouts.read
        self.last_data = self.loop.time()
        if timeouts.read is not None:
            self.timer = self.loop.call_later(timeouts.read, self._check_read)
        if self.write_paused and not self.lost:
            self.drained = self.loop.create_future()
            try:
                async with asyncio.timeout(timeouts.write):
                    await self.drained
            except TimeoutError:
                self.abort()
                raise httpx.WriteTimeout("timed out sending the request") from None
            finally:
                self.drained = None

    def _check_read(self) -> None:
        self.timer = None
        timeout = self.read_timeout
        if self.exchange is None or timeout is None:
            return
        silent = self.loop.time() - self.last_data
        if self.reading_paused or silent < timeout:
            # Data came since the timer was set (or the reader holds the socket): wait for the rest.
            wait = timeout if self.reading_paused else timeout - silent
            self.timer = self.loop.call_later(wait, self._check_read)
            return
        self._fail(httpx.ReadTimeout("timed out waiting for data"))

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, exc: httpx.HTTPError) -> None:
        exchange, self.exchange = self.exchange, None
        self.abort()
        if exchange is not None:
            exchange._fail(exc)

    def pause(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.lost:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.reading_paused and self.transport is not None and not self.lost:
            self.reading_paused = False
            self.last_data = self.loop.time()
            self.transport.resume_reading()

    def abort(self) -> None:
        self._stop_timer()
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """The connections of one event loop, by origin (scheme, host, port)."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self.open: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.members: set[_Connection] = set()
        self.waiters: dict[tuple[str, str, int], collections.deque[asyncio.Future[None]]] = {}

    async def acquire(
        self, origin: tuple[str, str, int], timeouts: Timeouts, ssl_context: ssl.SSLContext | None
    ) -> tuple[_Connection, bool]:
        """A connection for ``origin`` and whether it was used before."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.pool if timeouts.pool is not None else None
        while True:
            idle = self.idle.get(origin)
            now = loop.time()
            while idle:
                connection = idle.pop()
                if connection.lost:
                    continue
                if now - connection.idle_since > IDLE_SECONDS:
                    connection.abort()
                    continue
                return connection, True
            if self.open[origin] < settings.LLM_HTTP_MAX_CONNECTIONS:
                break
            waiter = loop.create_future()
            self.waiters.setdefault(origin, collections.deque()).append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if not waiter.done():
                    waiter.cancel()
                elif not waiter.cancelled():
                    self._wake(origin)  # woken, but leaving: the next one in line gets the connection
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout("timed out waiting for a connection to the LLM server") from None
                raise
        self.open[origin] += 1
        try:
            connection = await self._connect(origin, timeouts, ssl_context)
            if connection.lost:  # closed before it was a member: forget() did not count it down
                raise httpx.ConnectError("the server closed the connection as it opened")
        except BaseException:
            self.open[origin] -= 1
            self._wake(origin)
            raise
        self.members.add(connection)
        return connection, False

    async def _connect(
        self, origin: tuple[str, str, int], timeouts: Timeouts, ssl_context: ssl.SSLContext | None
    ) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if scheme == "https":
            tls = {"ssl": ssl_context or default_ssl_context(), "server_hostname": host}
        try:
            async with asyncio.timeout(timeouts.connect):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, origin), host, port, **tls
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or exc.__class__.__name__) from None
        return connection

    def release(self, connection: _Connection) -> None:
        connection.idle_since = connection.loop.time()
        idle = self.idle.setdefault(connection.origin, [])
        idle.append(connection)
        if len(idle) > settings.LLM_HTTP_MAX_KEEPALIVE_CONNECTIONS:
            idle.pop(0).abort()
        self._wake(connection.origin)

    def forget(self, connection: _Connection) -> None:
        if connection in self.members:
            self.members.discard(connection)
            self.open[connection.origin] -= 1
            idle = self.idle.get(connection.origin)
            if idle and connection in idle:
                idle.remove(connection)
            self._wake(connection.origin)

    def _wake(self, origin: tuple[str, str, int]) -> None:
        waiters = self.waiters.get(origin)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        for connection in list(self.members):
            connection.abort()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()
_ssl_context: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """httpx's own (certifi, or ``SSL_CERT_FILE``), made once: building one reads the CA bundle."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = httpx.create_ssl_context()
    return _ssl_context


def _pool() -> _Pool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = _Pool()
    return pool


def pool_state() -> dict[str, int]:
    """The running loop's connections: ``open`` and ``idle`` (tests, diagnostics)."""
    pool = _pools.get(asyncio.get_running_loop())
    if pool is None:
        return {"open": 0, "idle": 0}
    return {"open": len(pool.members), "idle": sum(len(idle) for idle in pool.idle.values())}


def close_connections() -> None:
    """Close the running loop's connections (tests, or a shutdown)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        pool.close()


def encode_request(url: httpx.URL, headers: dict[str, str], body: bytes) -> bytes:
    """The request head and body. Raises ``httpx.LocalProtocolError`` for a header value that would
    break the head (the message does not repeat the value: it may be a key)."""
    lines = [b"POST " + url.raw_path + b" HTTP/1.1", b"Host: " + url.netloc, b"User-Agent: " + USER_AGENT]
    for name, value in headers.items():
        if _FORBIDDEN_IN_HEADERS.intersection(value):
            raise httpx.LocalProtocolError(f"the {name} header holds a line break")
        try:
            lines.append(name.encode("ascii") + b": " + value.encode("ascii"))
        except UnicodeEncodeError:
            raise httpx.LocalProtocolError(f"the {name} header is not ASCII text") from None
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def request(
    url: httpx.URL,
    *,
    headers: dict[str, str],
    body: bytes,
    timeouts: Timeouts,
    ssl_context: ssl.SSLContext | None = None,
) -> Exchange:
    """POST ``body`` to ``url`` and wait for the answer's status and headers. Raises httpx's errors
    (``ConnectError``, ``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError`` …)."""
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise httpx.UnsupportedProtocol(f"the URL {url.scheme}://… is not http or https")
    origin = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
    data = encode_request(url, headers, body)
    pool = _pool()
    loop = asyncio.get_running_loop()
    for attempt in (1, 2):
        connection, reused = await pool.acquire(origin, timeouts, ssl_context)
        exchange = Exchange(loop)
        try:
            await connection.send(exchange, data, timeouts)
            await exchange.head
        except httpx.TransportError as exc:
            exchange.close()
            dropped = isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError))
            if reused and dropped and not exchange.received and attempt == 1:
                continue  # the server closed the idle connection as the request went out: once more
            raise
        except BaseException:
            exchange.close()  # cancelled: the server sees the request go
            raise
        return exchange
    raise AssertionError("unreachable")  # pragma: no cover
