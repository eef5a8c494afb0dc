"""JSON over HTTP for the worker services, on the standard library's ``ThreadingHTTPServer``.

A service declares its routes (method and path pattern, ``{name}`` matching one path segment) with a
handler each; a handler takes a ``Request`` and returns a ``Response`` or raises ``ApiError``. Every
error leaves in one JSON shape, ``{"code", "message", "fields"}`` (like
``shared_contracts.schemas.common.ErrorBody``; ``fields`` maps a request field to its problems):

- 400 ``bad_request`` (a field is wrong), ``invalid_json`` (the body is not a JSON object)
- 404 ``not_found`` (no such path or resource), 405 ``method_not_allowed``
- 411 ``length_required`` (a body without ``Content-Length``: chunked uploads are not read)
- 413 ``payload_too_large`` (the body is over the service's limit; it is not read)
- 503 ``busy`` (a service's own capacity limit), 500 ``internal_error`` (a bug: logged with its traceback)
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

BODY_METHODS = {"POST", "PUT", "PATCH"}
# After a body was refused unread: how long the connection still takes (and drops) what the client sends.
LINGER_SECONDS = 2.0


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, fields: Mapping[str, list[str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = dict(fields or {})

    def body(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "fields": self.fields}


def bad_request(message: str, *, field_name: str = "", code: str = "bad_request") -> ApiError:
    """A 400 about one request field (named in ``fields`` when given)."""
    return ApiError(400, code, message, fields={field_name: [message]} if field_name else None)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, str]
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (400 ``invalid_json`` otherwise)."""
        if not self.body:
            raise ApiError(400, "invalid_json", "the request needs a JSON object body")
        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        return value


@dataclass(frozen=True)
class Response:
    body: bytes
    status: int = 200
    content_type: str = "application/json"

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        return cls(json.dumps(value, separators=(",", ":"), allow_nan=False).encode(), status)


Handler = Callable[[Request], Response]


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        segments = [
            f"(?P<{segment[1:-1]}>[^/]+)"
            if segment.startswith("{") and segment.endswith("}")
            else re.escape(segment)
            for segment in pattern.split("/")
        ]
        self._routes.append((method, re.compile("^" + "/".join(segments) + "$"), handler))

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed: list[str] = []
        for route_method, regex, handler in self._routes:
            match = regex.match(path)
            if match is None:
                continue
            if route_method == method:
                return handler, {name: unquote(value) for name, value in match.groupdict().items()}
            allowed.append(route_method)
        if allowed:
            raise ApiError(
                405, "method_not_allowed", f"{method} is not allowed here; use {', '.join(allowed)}"
            )
        raise not_found(f"no such path: {path}")


class JsonServer(ThreadingHTTPServer):
    """One thread per connection; ``max_body_bytes`` caps every request body."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], router: Router, *, name: str, max_body_bytes: int) -> None:
        self.router = router
        self.name = name
        self.max_body_bytes = max_body_bytes
        super().__init__(address, _RequestHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client's batch of calls reuses one connection
    server: JsonServer
    _body_unread = False

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        started = time.monotonic()
        self._body_unread = False
        path = urlsplit(self.path).path
        try:
            body = self._read_body()  # first, also for a wrong path: an unread body would spoil keep-alive
            handler, params = self.server.router.resolve(self.command, path)
            response = handler(Request(self.command, path, params, body, dict(self.headers.items())))
        except ApiError as exc:
            response = Response.json(exc.body(), exc.status)
        except Exception:
            logger.exception("%s %s failed", self.command, path)
            response = Response.json(
                {"code": "internal_error", "message": "the service failed; see its log", "fields": {}}, 500
            )
        self._send(response)
        if self._body_unread:
            self._linger()
        logger.info(
            "%s %s %s %d %.1f ms",
            self.address_string(),
            self.command,
            path,
            response.status,
            (time.monotonic() - started) * 1000,
        )

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self._refuse_body()
            raise ApiError(
                411, "length_required", "send the body with a Content-Length (no chunked encoding)"
            )
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            if self.command in BODY_METHODS:
                raise ApiError(411, "length_required", "a request body needs a Content-Length header")
            return b""
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self._refuse_body()
            raise ApiError(400, "bad_request", "Content-Length is not a non-negative integer")
        if length > self.server.max_body_bytes:
            self._refuse_body()
            raise ApiError(
                413,
                "payload_too_large",
                f"the body has {length} bytes; at most {self.server.max_body_bytes} are accepted",
            )
        return self.rfile.read(length)

    def _refuse_body(self) -> None:
        # The body stays unread: the connection cannot carry another request, it closes after the answer.
        self.close_connection = True
        self._body_unread = True

    def _linger(self) -> None:
        """Closing a socket with unread data makes the kernel answer with a reset, which can destroy the
        response before the client read it. So: stop sending, then drop what still arrives until the
        client closes (or a short while passes)."""
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_SECONDS)
            deadline = time.monotonic() + LINGER_SECONDS
            while time.monotonic() < deadline and self.connection.recv(65536):
                pass

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the access line comes from _handle, with the time taken

    def log_message(self, format: str, *args: Any) -> None:
        # Left for the base class's own protocol errors (a malformed request line, a timeout).
        logger.warning("%s %s", self.address_string(), format % args)

    def version_string(self) -> str:
        return self.server.name


def serve_until_signalled(server: JsonServer) -> None:
    """Serve until SIGTERM or SIGINT; requests in flight finish, then the socket closes."""

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it runs beside it, not in it.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()
