"""The HTTP side: a stdlib ``ThreadingHTTPServer`` (one thread per connection, one request per
connection) that translates requests into calls on ``browser.Browser`` and its answers or errors into
JSON (or PNG)."""

from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from workers.browser_worker.browser import Browser, PageVisit
from workers.browser_worker.config import Config
from workers.browser_worker.errors import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, WorkerError
from workers.browser_worker.targets import Target, target_from

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
# A client gets this long to send its request (a slow client holds only its own thread).
READ_TIMEOUT_SECONDS = 30
REQUEST_FIELDS = frozenset({"url"})


class WorkerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: Config, browser: Browser) -> None:
        self.config = config
        self.browser = browser
        super().__init__((config.bind, config.port), Handler)


class Handler(BaseHTTPRequestHandler):
    server: WorkerServer
    server_version = "autobot-browser-worker"
    timeout = READ_TIMEOUT_SECONDS

    # ----------------------------------------------------------------------------------------------
    # Routes

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        status = HTTPStatus.INTERNAL_SERVER_ERROR
        routes = {
            "/health": ("GET", self._health),
            "/v1/navigate": ("POST", self._navigate),
            "/v1/text": ("POST", self._text),
            "/v1/screenshot": ("POST", self._screenshot),
        }
        path = self.path.split("?", 1)[0]
        try:
            if path not in routes:
                raise NotFound(f"no route {path}")
            allowed_method, handler = routes[path]
            if method != allowed_method:
                raise MethodNotAllowed(f"{path} takes {allowed_method}")
            status = handler()
        except WorkerError as exc:
            status = HTTPStatus(exc.status)
            self._send_json(status, exc.body())
        except Exception:
            logger.exception("%s %s failed", method, path)
            self._send_json(status, {"code": "internal_error", "message": "the worker failed", "fields": {}})
        logger.info("%s %s %d %.0f ms", method, path, status, (time.monotonic() - started) * 1000)

    def _health(self) -> HTTPStatus:
        browser = self.server.browser.health()
        self._send_json(HTTPStatus.OK, {"status": "ok", "browser": browser})
        return HTTPStatus.OK

    def _navigate(self) -> HTTPStatus:
        visit = self.server.browser.navigate(self._target())
        self._send_json(HTTPStatus.OK, _visit_body(visit))
        return HTTPStatus.OK

    def _text(self) -> HTTPStatus:
        visit, text, truncated = self.server.browser.text(self._target())
        self._send_json(HTTPStatus.OK, _visit_body(visit) | {"text": text, "truncated": truncated})
        return HTTPStatus.OK

    def _screenshot(self) -> HTTPStatus:
        visit, image = self.server.browser.screenshot(self._target())
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(image)))
        self.send_header("X-Final-Url", visit.final_url)
        if visit.status is not None:
            self.send_header("X-Page-Status", str(visit.status))
        self.end_headers()
        self.wfile.write(image)
        return HTTPStatus.OK

    # ----------------------------------------------------------------------------------------------
    # Input and output

    def _target(self) -> Target:
        body = self._json_body()
        unknown = sorted(set(body) - REQUEST_FIELDS)
        if unknown:
            fields = {name: ["unknown field"] for name in unknown}
            raise BadRequest(f"unknown fields {unknown}", fields=fields)
        return target_from(body.get("url"), self.server.config.allowed_hosts)

    def _json_body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("a JSON body with a Content-Length is required") from None
        if length < 0:
            raise BadRequest("a JSON body with a Content-Length is required")
        if length > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest('the body must be a JSON object: {"url": "https://…"}')
        return body

    def _send_json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged once by ``_dispatch`` (with their duration), not by the stdlib."""


def _visit_body(visit: PageVisit) -> dict[str, Any]:
    return {
        "status": visit.status,
        "final_url": visit.final_url,
        "title": visit.title,
        "blocked_requests": len(visit.blocked),
    }
