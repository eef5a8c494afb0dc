"""The asyncio network backend under the LLM clients' pools (llm/network.py), against real local servers:
plain and TLS, streamed bodies, keep-alive connections the server closed, read timeouts."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import tempfile
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from business_project.llm import clients, network

LIMITS = httpx.Limits(max_connections=10, max_keepalive_connections=5, keepalive_expiry=30)


class Server:
    """A tiny HTTP/1.1 server: ``/stream`` sends 3 chunks 20 ms apart, ``/slow`` answers after 2 s,
    ``/close`` answers and closes the connection; every other path answers ``ok``."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/stream":
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for part in (b"one ", b"two ", b"three"):
                        writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.02)
                    writer.write(b"0\r\n\r\n")
                elif path == b"/slow":
                    await asyncio.sleep(2)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if path == b"/close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def self_signed() -> tuple[ssl.SSLContext, ssl.SSLContext]:
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
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


async def serve(server: Server, ssl_context: ssl.SSLContext | None = None):
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=ssl_context)
    return listener, listener.sockets[0].getsockname()[1]


def test_the_llm_clients_run_on_the_asyncio_backend():
    async def go():
        client = clients.new_http_client()
        try:
            return client._transport._pool._network_backend
        finally:
            await client.aclose()

    assert isinstance(asyncio.run(go()), network.AsyncioBackend)


@pytest.mark.parametrize("tls", [False, True])
def test_streamed_bodies_arrive_in_order_and_connections_are_reused(tls):
    async def go():
        server = Server()
        server_ssl, client_ssl = self_signed() if tls else (None, None)
        listener, port = await serve(server, server_ssl)
        scheme = "https" if tls else "http"
        async with httpx.AsyncClient(
            transport=network.http_transport(LIMITS, ssl_context=client_ssl)
        ) as client:
            parts = []
            async with client.stream("GET", f"{scheme}://127.0.0.1:{port}/stream") as response:
                async for chunk in response.aiter_bytes():
                    parts.append(chunk)
            again = await client.get(f"{scheme}://127.0.0.1:{port}/")
        listener.close()
        return b"".join(parts), again.text, server.connections

    body, again, connections = asyncio.run(go())
    assert body == b"one two three"
    assert again == "ok"
    assert connections == 1


def test_a_keep_alive_connection_the_server_closed_is_not_reused():
    async def go():
        server = Server()
        listener, port = await serve(server)
        async with httpx.AsyncClient(transport=network.http_transport(LIMITS)) as client:
            first = await client.get(f"http://127.0.0.1:{port}/close")
            await asyncio.sleep(0.1)  # the server has closed it by now; the pool must notice
            second = await client.get(f"http://127.0.0.1:{port}/")
        listener.close()
        return first.text, second.text, server.connections

    assert asyncio.run(go()) == ("ok", "ok", 2)


def test_a_read_timeout_is_httpx_read_timeout_and_a_refused_connection_a_connect_error():
    async def go():
        server = Server()
        listener, port = await serve(server)
        async with httpx.AsyncClient(transport=network.http_transport(LIMITS)) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"http://127.0.0.1:{port}/slow", timeout=httpx.Timeout(5, read=0.2))
            listener.close()
            await listener.wait_closed()
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")

    asyncio.run(go())
