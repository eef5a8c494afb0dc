"""The HTTP/1.1 client of the streamed chat requests (llm/wire.py), against real local servers: streamed
bodies over plain and TLS connections, split at every byte or delimited by the connection's end;
keep-alive reuse, connections the server closes (a stale one is retried once, a fresh one is not), idle
expiry and the per-origin limit (and a waiting request cancelled as it is woken); read, pool and connect
failures; header injection; informational and error answers; closing an exchange, a sink that raises,
and pausing the reading (also as an answer ends)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from business_project.llm import wire

STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
NO_CONNECTIONS = {"open": 0, "idle": 0}
ONE_IDLE = {"open": 1, "idle": 1}


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


@dataclass
class Call:
    """One request the server read: its connection (1, 2 …) and its rank on that connection."""

    server: Server
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    connection: int
    served: int


class Server:
    """A tiny HTTP/1.1 server: reads each request, then awaits ``answer(call)``, which writes what it
    likes and says whether to keep the connection (False: close it, answered or not)."""

    def __init__(self, answer: Callable[[Call], Awaitable[bool]]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[tuple[int, int]] = []  # (connection, served)
        self.client_left = 0  # connections the client closed (end of stream or reset)
        self.gate = asyncio.Event()  # for answers that wait on the test
        self.url = httpx.URL()
        self.client_ssl: ssl.SSLContext | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, served = self.connections, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.client_left += 1
                    break
                lines = head.lower().split(b"\r\n")
                length = next(int(line[15:]) for line in lines if line.startswith(b"content-length:"))
                await reader.readexactly(length)
                served += 1
                self.requests.append((connection, served))
                keep = await self.answer(Call(self, reader, writer, connection, served))
                await writer.drain()
                if not keep:
                    break
        except ConnectionError:  # reset: the client went away with bytes unread
            self.client_left += 1
        except (asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


async def send(writer: asyncio.StreamWriter, *pieces: bytes, pause: float = 0.0) -> None:
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(pause)


def self_signed() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate for 127.0.0.1, and a client one trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as directory:  # read at once; nothing is left behind
        (Path(directory) / "cert.pem").write_bytes(cert_pem)
        (Path(directory) / "key.pem").write_bytes(key_pem)
        server.load_cert_chain(certfile=Path(directory) / "cert.pem", keyfile=Path(directory) / "key.pem")
    return server, ssl.create_default_context(cadata=cert_pem.decode())


@contextlib.asynccontextmanager
async def serving(answer: Callable[[Call], Awaitable[bool]], *, tls: bool = False):
    server = Server(answer)
    server_ssl, server.client_ssl = self_signed() if tls else (None, None)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_ssl)
    port = listener.sockets[0].getsockname()[1]
    server.url = httpx.URL(f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1/chat/completions")
    try:
        yield server
    finally:
        wire.close_connections()
        listener.close()


async def post(
    server: Server, *, read: float = 5.0, pool: float = 5.0, headers: dict[str, str] | None = None
) -> wire.Exchange:
    return await wire.request(
        server.url,
        headers=headers if headers is not None else {"Authorization": "Bearer test-key"},
        body=b'{"stream": true}',
        timeouts=wire.Timeouts(connect=5.0, read=read, write=5.0, pool=pool),
        ssl_context=server.client_ssl,
    )


class Recorder:
    """A sink that notes what it is handed, in order (a failure as "Type: message"); ``done`` resolves
    at ``end`` or ``fail``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes | str | None]] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def end(self) -> None:
        self.events.append(("end", None))
        if not self.done.done():
            self.done.set_result(None)

    def fail(self, exc: httpx.HTTPError) -> None:
        self.events.append(("fail", f"{type(exc).__name__}: {exc}"))
        if not self.done.done():
            self.done.set_result(None)

    async def finished(self) -> list[tuple[str, bytes | str | None]]:
        await asyncio.wait_for(asyncio.shield(self.done), 3)
        return self.events


async def streamed(server: Server, recorder: Recorder | None = None, **options) -> Recorder:
    """Post, and attach ``recorder`` (a new one by default) to the answer."""
    recorder = recorder or Recorder()
    (await post(server, **options)).attach(recorder)
    return recorder


async def until(condition: Callable[[], object], seconds: float = 3.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


async def keep_answering(call: Call) -> bool:
    await send(call.writer, OK)
    return True


async def gated(call: Call) -> bool:
    """A connection's first answer: the head and "one ", then "two " once the test opens the gate."""
    if call.served > 1:
        return await keep_answering(call)
    await send(call.writer, STREAM_HEAD, chunk(b"one "))
    await call.server.gate.wait()
    await send(call.writer, chunk(b"two ") + LAST_CHUNK)
    return True


async def head_then_silence(call: Call) -> bool:
    await send(call.writer, STREAM_HEAD, chunk(b"one "))
    return True  # and read on: the next request, or the client's going


async def head_then_the_rest_at_once(call: Call) -> bool:
    """A connection's first answer: the head, and a moment later the whole body and its end in one write
    (a sink attached when the head came gets them in one callback)."""
    if call.served > 1:
        return await keep_answering(call)
    await send(call.writer, STREAM_HEAD, pause=0.05)
    await send(call.writer, chunk(b"one ") + chunk(b"two ") + LAST_CHUNK)
    return True


ONE_TWO = [("body", b"one "), ("body", b"two "), ("end", None)]


# --------------------------------------------------------------------------------------------------
# Streamed bodies and keep-alive


@pytest.mark.parametrize("tls", [False, True])
def test_a_streamed_body_arrives_piece_by_piece_and_the_connection_is_reused(tls):
    async def three_pieces(call: Call) -> bool:
        await send(call.writer, STREAM_HEAD)
        await send(call.writer, chunk(b"one "), chunk(b"two "), chunk(b"three"), pause=0.02)
        await send(call.writer, LAST_CHUNK)
        return True

    async def go():
        async with serving(three_pieces, tls=tls) as server:
            exchange = await post(server)
            recorder = Recorder()
            exchange.attach(recorder)
            events = await recorder.finished()
            again = await (await post(server)).read(100)
            return exchange.status, exchange.headers[1], events, again, server.connections, wire.pool_state()

    status, header, events, again, connections, pool = asyncio.run(go())
    assert (status, header) == (200, (b"Transfer-Encoding", b"chunked"))
    assert events == [("body", b"one "), ("body", b"two "), ("body", b"three"), ("end", None)]
    assert (again, connections, pool) == (b"one two three", 1, ONE_IDLE)


def test_an_answer_split_at_every_byte_is_read_as_when_it_comes_whole():
    answer = STREAM_HEAD + chunk(b"data: one\n\n") + chunk(b"data: two\n\n") + LAST_CHUNK

    async def whole_then_bytes(call: Call) -> bool:
        pieces = [answer] if call.served == 1 else [answer[i : i + 1] for i in range(len(answer))]
        await send(call.writer, *pieces)
        return True

    async def go():
        async with serving(whole_then_bytes) as server:
            seen = []
            for _ in range(2):
                exchange = await post(server)
                recorder = Recorder()
                exchange.attach(recorder)
                events = await recorder.finished()
                body = b"".join(data for kind, data in events if kind == "body")  # type: ignore[misc]
                seen.append((exchange.status, exchange.headers, body, events[-1], len(events)))
            return seen, server.connections

    (whole, split), connections = asyncio.run(go())
    headers = [(b"Content-Type", b"text/event-stream"), (b"Transfer-Encoding", b"chunked")]
    assert whole[:4] == split[:4] == (200, headers, b"data: one\n\ndata: two\n\n", ("end", None))
    assert split[4] > 3  # the body did come in many pieces
    assert connections == 1  # and the end of the split answer was found: the connection was reused


@pytest.mark.parametrize("says_close", [True, False])
def test_after_an_answer_the_server_closes_the_next_request_opens_a_new_connection(says_close):
    async def answer_then_close(call: Call) -> bool:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + (b"Connection: close\r\n" if says_close else b"")
        await send(call.writer, head + b"\r\nok")
        return False

    async def go():
        async with serving(answer_then_close) as server:
            first = await (await post(server)).read(100)
            await asyncio.sleep(0.1)  # the server's close has come in by now
            after_first = wire.pool_state()
            second = await (await post(server)).read(100)
            return first, after_first, second, server.connections

    assert asyncio.run(go()) == (b"ok", NO_CONNECTIONS, b"ok", 2)


def test_a_kept_alive_connection_the_server_dropped_gets_the_request_again_on_a_new_one():
    async def drop_the_second_request(call: Call) -> bool:
        if call.served == 2:
            return False  # read it, close without a word: the keep-alive race
        return await keep_answering(call)

    async def go():
        async with serving(drop_the_second_request) as server:
            first = await (await post(server)).read(100)
            exchange = await post(server)
            return first, exchange.status, await exchange.read(100), server.requests

    assert asyncio.run(go()) == (b"ok", 200, b"ok", [(1, 1), (1, 2), (2, 1)])


def test_a_new_connection_closed_without_an_answer_is_not_retried():
    async def close_unanswered(call: Call) -> bool:
        return False

    async def go():
        async with serving(close_unanswered) as server:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await post(server)
            return server.connections, wire.pool_state()

    assert asyncio.run(go()) == (1, NO_CONNECTIONS)


def test_an_idle_connection_past_its_time_is_not_reused(monkeypatch):
    monkeypatch.setattr(wire, "IDLE_SECONDS", 0)

    async def go():
        async with serving(keep_answering) as server:
            first = await (await post(server)).read(100)
            await asyncio.sleep(0.01)
            second = await (await post(server)).read(100)
            return first, second, server.connections, wire.pool_state()

    assert asyncio.run(go()) == (b"ok", b"ok", 2, ONE_IDLE)


@pytest.mark.parametrize("tls", [False, True])
def test_a_body_delimited_by_the_end_of_the_connection_completes_and_the_connection_is_not_kept(tls):
    async def until_close(call: Call) -> bool:
        await send(call.writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        await send(call.writer, b"one ", b"two ", pause=0.02)
        return False

    async def go():
        async with serving(until_close, tls=tls) as server:
            return await (await streamed(server)).finished(), wire.pool_state()

    assert asyncio.run(go()) == (ONE_TWO, NO_CONNECTIONS)


# --------------------------------------------------------------------------------------------------
# Timeouts, failures and the connection limit


@pytest.mark.parametrize("tls", [False, True])
def test_a_server_silent_after_the_headers_fails_the_sink_with_a_read_timeout(tls):
    async def go():
        async with serving(head_then_silence, tls=tls) as server:
            events = await (await streamed(server, read=0.2)).finished()
            await until(lambda: server.client_left == 1)  # the client hung up
            return events, wire.pool_state()

    timeout = ("fail", "ReadTimeout: timed out waiting for data")
    assert asyncio.run(go()) == ([("body", b"one "), timeout], NO_CONNECTIONS)


def test_a_server_that_never_answers_raises_read_timeout_from_request():
    async def go():
        async with serving(lambda call: asyncio.sleep(0, result=True)) as server:  # reads, never answers
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(httpx.ReadTimeout):
                await post(server, read=0.2)
            return loop.time() - started, server.connections

    waited, connections = asyncio.run(go())
    assert 0.2 <= waited < 2
    assert connections == 1


def test_data_more_often_than_the_read_timeout_keeps_a_longer_answer_alive():
    async def slow_stream(call: Call) -> bool:
        await send(call.writer, STREAM_HEAD)
        await send(call.writer, *(chunk(b"%d " % n) for n in range(6)), pause=0.1)  # 0.6 s in all
        await send(call.writer, LAST_CHUNK)
        return True

    async def go():
        async with serving(slow_stream) as server:
            return await (await streamed(server, read=0.25)).finished()

    events = asyncio.run(go())
    assert events == [("body", b"%d " % n) for n in range(6)] + [("end", None)]


def test_a_refused_connection_raises_connect_error_and_frees_its_place_in_the_pool(settings):
    settings.LLM_HTTP_MAX_CONNECTIONS = 1
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def go():
        url = httpx.URL(f"http://127.0.0.1:{port}/v1/chat/completions")
        for _ in range(2):  # the second would be a PoolTimeout if the first kept its place
            with pytest.raises(httpx.ConnectError):
                await wire.request(url, headers={}, body=b"{}", timeouts=wire.Timeouts(5, 5, 5, 0.2))
        return wire.pool_state()

    assert asyncio.run(go()) == NO_CONNECTIONS


@pytest.mark.parametrize("value", ["sk-secret\r\nX-Injected: 1", "sk-secret\n", "sk-secret\0", "sk-sécret"])
def test_a_header_value_that_would_break_the_head_is_refused_before_connecting(value):
    async def go():
        async with serving(keep_answering) as server:
            with pytest.raises(httpx.LocalProtocolError) as raised:
                await post(server, headers={"Authorization": value})
            return str(raised.value), server.connections

    message, connections = asyncio.run(go())
    assert message.startswith("the Authorization header")
    assert "secret" not in message
    assert "sécret" not in message
    assert connections == 0


def test_a_request_beyond_the_connection_limit_waits_for_the_answer_before_it_up_to_its_pool_timeout(
    settings,
):
    settings.LLM_HTTP_MAX_CONNECTIONS = 1

    async def go():
        async with serving(gated) as server:
            recorder = await streamed(server)
            with pytest.raises(httpx.PoolTimeout):
                await post(server, pool=0.1)
            waiting = asyncio.create_task(post(server))
            await asyncio.sleep(0.1)
            waited = not waiting.done()
            server.gate.set()
            events = await recorder.finished()
            second = await (await asyncio.wait_for(waiting, 3)).read(100)
            return waited, events, second, server.connections

    assert asyncio.run(go()) == (True, ONE_TWO, b"ok", 1)  # the second reused the first's connection


def test_a_waiting_request_cancelled_as_it_is_handed_the_connection_passes_it_on_to_the_next(settings):
    settings.LLM_HTTP_MAX_CONNECTIONS = 1

    async def go():
        async with serving(gated) as server:
            recorder = await streamed(server)
            cancelled = asyncio.create_task(post(server))
            await asyncio.sleep(0.05)
            next_in_line = asyncio.create_task(post(server, pool=1.0))
            await asyncio.sleep(0.05)
            server.gate.set()
            # The sink's end runs before the connection goes back to the pool, so this task resumes in
            # the loop turn where ``cancelled`` is woken, before ``cancelled`` runs: the cancel lands then.
            await recorder.done
            cancelled.cancel()
            try:
                return (await next_in_line).status
            except httpx.PoolTimeout:
                return f"PoolTimeout, the pool being {wire.pool_state()}"

    assert asyncio.run(go()) == 200


# --------------------------------------------------------------------------------------------------
# Answers, and what the reader does with them


@pytest.mark.parametrize("tls", [False, True])
def test_closing_an_exchange_mid_body_closes_its_connection_quietly(tls):
    async def go():
        async with serving(head_then_silence, tls=tls) as server:
            exchange = await post(server)
            recorder = Recorder()
            exchange.attach(recorder)
            await until(lambda: recorder.events)
            exchange.close()
            pool = wire.pool_state()
            await until(lambda: server.client_left == 1)
            await asyncio.sleep(0.05)
            return pool, recorder.events

    assert asyncio.run(go()) == (NO_CONNECTIONS, [("body", b"one ")])


def test_an_informational_answer_before_the_real_one_is_skipped():
    async def continue_then_answer(call: Call) -> bool:
        await send(call.writer, b"HTTP/1.1 100 Continue\r\nX-Early: 1\r\n\r\n", pause=0.02)
        await send(call.writer, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        return True

    async def go():
        async with serving(continue_then_answer) as server:
            exchange = await post(server)
            body = await exchange.read(100)
            again = await (await post(server)).read(100)
            return exchange.status, exchange.headers, body, again, server.connections

    assert asyncio.run(go()) == (200, [(b"Content-Length", b"5")], b"hello", b"hello", 1)


def test_an_error_answer_can_be_read_and_its_connection_is_kept():
    error = b'{"error": {"message": "overloaded"}}'

    async def unavailable(call: Call) -> bool:
        head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        await send(call.writer, head + b"Content-Length: %d\r\n\r\n" % len(error) + error)
        return True

    async def go():
        async with serving(unavailable) as server:
            exchange = await post(server)
            body = await exchange.read(4096)
            pool = wire.pool_state()
            again = await post(server)
            return exchange.status, body, pool, again.status, server.connections

    assert asyncio.run(go()) == (503, error, ONE_IDLE, 503, 1)


@pytest.mark.parametrize("tls", [False, True])
def test_a_sink_that_raises_fails_its_exchange_and_closes_the_connection(tls, llm_logs):
    class Broken(Recorder):
        def body(self, data: bytes) -> None:
            super().body(data)
            raise RuntimeError("a bug in the reader")

    async def go():
        async with serving(head_then_the_rest_at_once, tls=tls) as server:
            events = await (await streamed(server, Broken())).finished()
            pool = wire.pool_state()
            await until(lambda: server.client_left == 1)
            again = await (await post(server)).read(100)  # the loop and the pool carry on
            return events, pool, again, server.connections

    events, pool, again, connections = asyncio.run(go())
    assert events == [("body", b"one "), ("fail", "RemoteProtocolError: the answer could not be read")]
    assert (pool, again, connections) == (NO_CONNECTIONS, b"one two ", 2)
    assert "a stream's reader failed" in llm_logs.text


def test_paused_reading_holds_the_pieces_back_without_a_read_timeout():
    async def go():
        async with serving(gated) as server:
            exchange = await post(server, read=0.2)
            recorder = Recorder()
            exchange.attach(recorder)
            await until(lambda: recorder.events)
            exchange.pause_reading()
            server.gate.set()
            await asyncio.sleep(0.5)  # the rest has been sent, and more than the read timeout has passed
            while_paused = list(recorder.events)
            exchange.resume_reading()
            return while_paused, await recorder.finished()

    assert asyncio.run(go()) == ([("body", b"one ")], ONE_TWO)


def test_a_connection_paused_by_its_reader_as_the_answer_ends_reads_the_next_answer():
    class Pausing(Recorder):  # pauses at every piece, as ``LlmStream`` does when its reader falls behind
        exchange: wire.Exchange

        def body(self, data: bytes) -> None:
            super().body(data)
            self.exchange.pause_reading()

    async def go():
        async with serving(head_then_the_rest_at_once) as server:
            exchange = await post(server)
            recorder = Pausing()
            recorder.exchange = exchange
            exchange.attach(recorder)
            events = await recorder.finished()
            exchange.resume_reading()  # the reader caught up
            try:
                again = await asyncio.wait_for(post(server, read=0.3), 2)
                return events, await asyncio.wait_for(again.read(100), 2)
            except TimeoutError:  # neither an answer nor the read timeout came
                return events, "stuck"

    assert asyncio.run(go()) == (ONE_TWO, b"ok")
