"""The browser worker in this process, with Debian's Chromium, against pages served by a local HTTP
server: what it reads from a page, and what it refuses (bad input, hosts outside the allowlist,
including redirects and sub-resources that lead there, pages that take too long, more pages than slots).

Allowed: 127.0.0.1. Outside the allowlist: ``localhost`` (the same machine under another name) and
127.0.0.2, where a second server records every request that reaches it: it must see none."""

from __future__ import annotations

import http.client
import json
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures.services import in_ci

CHROMIUM = Path("/usr/bin/chromium")

FOX_PAGE = b"""<!doctype html><html><head><title>Fox page</title></head>
<body><h1>Foxes</h1><p>The quick brown fox jumps over the lazy dog.</p>
<p style="display:none">hidden words</p></body></html>"""


@dataclass
class PageServer:
    """The local site: pages on ``url``; ``outside_url`` is a host the worker must never reach."""

    url: str
    outside_url: str
    outside_hits: list[str]


def _serve(handler: type[BaseHTTPRequestHandler], address: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def site() -> Iterator[PageServer]:
    outside_hits: list[str] = []

    class Outside(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            outside_hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<title>Outside</title>secret")

        def log_message(self, *args) -> None:
            pass

    outside = _serve(Outside, "127.0.0.2")
    outside_url = f"http://127.0.0.2:{outside.server_address[1]}"

    class Site(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/page":
                self._send(FOX_PAGE)
            elif self.path == "/long":
                self._send(b"<title>Long</title><body><p>" + b"word " * 5000 + b"</p></body>")
            elif self.path == "/slow":
                time.sleep(3)
                self._send(b"<title>Slow</title>late")
            elif self.path == "/redirect-in":
                self._redirect("/page")
            elif self.path == "/redirect-out":
                self._redirect(f"{outside_url}/secret")
            elif self.path == "/embeds-outside":
                self._send(f'<title>Embeds</title><img src="{outside_url}/pixel.png">text'.encode())
            elif self.path == "/socket-outside":
                # The slow image holds the page's load event until the socket was tried.
                socket_url = outside_url.replace("http:", "ws:")
                self._send(
                    f'<title>Socket</title><script>new WebSocket("{socket_url}/ws")</script>'
                    '<img src="/slow-pixel">'.encode()
                )
            elif self.path == "/slow-pixel":
                time.sleep(0.5)
                self._send(b"")
            elif self.path == "/missing":
                self.send_response(404)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(b"<title>Not here</title>")
            else:
                self.send_error(404)

        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    site = _serve(Site, "127.0.0.1")
    yield PageServer(
        url=f"http://127.0.0.1:{site.server_address[1]}", outside_url=outside_url, outside_hits=outside_hits
    )
    site.shutdown()
    outside.shutdown()


@dataclass
class RunningWorker:
    url: str

    def request(self, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, str, bytes]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        host, port = self.url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request(method, path, body=data)
            response = connection.getresponse()
            return response.status, response.headers["Content-Type"], response.read()
        finally:
            connection.close()

    def post(self, path: str, body: bytes | dict | None) -> tuple[int, dict]:
        status, content_type, data = self.request("POST", path, body)
        assert content_type == "application/json"
        return status, json.loads(data)


def start_worker(**settings) -> Iterator[RunningWorker]:
    if not CHROMIUM.exists():
        if in_ci():
            pytest.fail("Debian's chromium is missing; .ci/run installs it")
        pytest.skip("install Debian's chromium to run the browser worker's tests")
    from workers.browser_worker import config
    from workers.browser_worker.browser import Browser
    from workers.browser_worker.server import WorkerServer

    worker_config = config.parse({"allowed_hosts": ["127.0.0.1"], "port": 1, **settings})
    worker_config = config.Config(**{**worker_config.__dict__, "port": 0})  # any free port
    browser = Browser(worker_config)
    browser.start()
    server = WorkerServer(worker_config, browser)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RunningWorker(url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        browser.stop()


@pytest.fixture(scope="module")
def worker() -> Iterator[RunningWorker]:
    yield from start_worker(max_text_chars=1000, navigation_timeout_seconds=1.5)


# --------------------------------------------------------------------------------------------------
# What it reads


def test_health_reports_the_connected_browser_and_its_version(worker):
    status, content_type, data = worker.request("GET", "/health")
    body = json.loads(data)
    assert (status, content_type, body["status"], body["browser"]["connected"]) == (
        200,
        "application/json",
        "ok",
        True,
    )
    assert body["browser"]["version"].split(".")[0].isdigit()


def test_navigate_answers_status_final_url_and_title(worker, site):
    status, body = worker.post("/v1/navigate", {"url": f"{site.url}/redirect-in"})
    assert status == 200
    assert body == {
        "status": 200,
        "final_url": f"{site.url}/page",
        "title": "Fox page",
        "blocked_requests": 0,
    }
    status, body = worker.post("/v1/navigate", {"url": f"{site.url}/missing"})
    assert (status, body["status"], body["title"]) == (200, 404, "Not here")


def test_text_is_the_visible_text_and_is_capped(worker, site):
    status, body = worker.post("/v1/text", {"url": f"{site.url}/page"})
    assert status == 200
    assert body["text"] == "Foxes\n\nThe quick brown fox jumps over the lazy dog."
    assert "hidden words" not in body["text"]
    assert body["truncated"] is False
    status, body = worker.post("/v1/text", {"url": f"{site.url}/long"})
    assert (status, len(body["text"]), body["truncated"]) == (200, 1000, True)


def test_screenshot_is_a_png_of_the_viewport(worker, site):
    status, content_type, data = worker.request("POST", "/v1/screenshot", {"url": f"{site.url}/page"})
    assert (status, content_type) == (200, "image/png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 800)


# --------------------------------------------------------------------------------------------------
# What it refuses


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", None),
        (b"[1, 2]", None),
        ({}, "url"),
        ({"url": 5}, "url"),
        ({"url": "ftp://127.0.0.1/file"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "http:///no-host"}, "url"),
        ({"url": "http://user:secret@127.0.0.1/"}, "url"),
        ({"url": "http://127.0.0.1:99999/"}, "url"),
        ({"url": "http://127.0.0.1/ with blanks"}, "url"),
        ({"url": "http://127.0.0.1/", "wait": 5}, "wait"),
    ],
)
def test_bad_input_is_400_with_the_field(worker, body, field):
    status, answer = worker.post("/v1/navigate", body)
    assert (status, answer["code"]) == (400, "bad_request"), answer
    assert answer["message"]
    if field:
        assert field in answer["fields"]


def test_a_body_too_large_wrong_method_or_unknown_path_is_refused(worker):
    status, answer = worker.post("/v1/text", {"url": "http://127.0.0.1/" + "a" * 20_000})
    assert (status, answer["code"]) == (413, "payload_too_large")
    status, _, data = worker.request("GET", "/v1/text")
    assert (status, json.loads(data)["code"]) == (405, "method_not_allowed")
    status, answer = worker.post("/v1/shell", {"url": "http://127.0.0.1/"})
    assert (status, answer["code"]) == (404, "not_found")


def test_a_host_outside_the_allowlist_is_403_and_never_reached(worker, site):
    port = site.url.rsplit(":", 1)[1]
    for url in (f"http://localhost:{port}/page", f"{site.outside_url}/secret", "https://example.com/"):
        for path in ("/v1/navigate", "/v1/text", "/v1/screenshot"):
            status, answer = worker.post(path, {"url": url})
            assert (status, answer["code"]) == (403, "host_not_allowed"), (url, path, answer)
    assert site.outside_hits == []


def test_a_redirect_to_a_host_outside_the_allowlist_is_403_and_not_followed(worker, site):
    status, answer = worker.post("/v1/text", {"url": f"{site.url}/redirect-out"})
    assert (status, answer["code"]) == (403, "host_not_allowed"), answer
    assert "127.0.0.2" in answer["message"]
    assert site.outside_hits == []


def test_a_page_cannot_make_the_browser_reach_outside_the_allowlist(worker, site):
    status, body = worker.post("/v1/text", {"url": f"{site.url}/embeds-outside"})
    assert (status, body["title"], body["blocked_requests"]) == (200, "Embeds", 1)
    assert site.outside_hits == []


def test_a_page_cannot_open_a_websocket_outside_the_allowlist(worker, site):
    status, body = worker.post("/v1/navigate", {"url": f"{site.url}/socket-outside"})
    assert (status, body["title"], body["blocked_requests"]) == (200, "Socket", 1)
    assert site.outside_hits == []


def test_a_page_that_does_not_load_in_time_is_504(worker, site):
    started = time.monotonic()
    status, answer = worker.post("/v1/navigate", {"url": f"{site.url}/slow"})
    assert (status, answer["code"]) == (504, "timeout"), answer
    assert time.monotonic() - started < 3
    # The worker is fine afterwards.
    assert worker.post("/v1/navigate", {"url": f"{site.url}/page"})[0] == 200


def test_a_host_that_does_not_answer_is_502(worker):
    # An allowed host with nothing listening on the port.
    status, answer = worker.post("/v1/navigate", {"url": "http://127.0.0.1:9/"})
    assert (status, answer["code"]) == (502, "navigation_failed"), answer


def test_more_requests_than_slots_wait_then_get_503(site):
    worker = start_worker(max_concurrency=1, queue_timeout_seconds=0.5, navigation_timeout_seconds=5)
    running = next(worker)
    try:
        answers: list[int] = []
        slow = threading.Thread(
            target=lambda: answers.append(running.post("/v1/navigate", {"url": f"{site.url}/slow"})[0])
        )
        slow.start()
        time.sleep(0.5)
        status, answer = running.post("/v1/navigate", {"url": f"{site.url}/page"})
        assert (status, answer["code"]) == (503, "busy"), answer
        slow.join()
        assert answers == [200]
        assert running.post("/v1/navigate", {"url": f"{site.url}/page"})[0] == 200
    finally:
        worker.close()


# --------------------------------------------------------------------------------------------------
# Configuration


def test_the_config_file_is_checked_at_start(tmp_path):
    from workers.browser_worker import config

    path = tmp_path / "worker.json"
    path.write_text(json.dumps({"allowed_hosts": ["Example.ORG.", "*.docs.example.org", "10.0.0.5"]}))
    loaded = config.load(path)
    assert loaded.allowed_hosts == ("example.org", "*.docs.example.org", "10.0.0.5")
    assert (loaded.bind, loaded.port, loaded.max_concurrency) == ("127.0.0.1", 3000, 2)
    for raw, message in [
        ({}, "allowed_hosts is required"),
        ({"allowed_hosts": ["a b"]}, "not a valid host name"),
        ({"allowed_hosts": [], "prot": 3000}, "unknown keys ['prot']"),
        ({"allowed_hosts": [], "port": "3000"}, "port must be a positive integer"),
        ({"allowed_hosts": [], "port": 70000}, "port must be at most 65535"),
        ({"allowed_hosts": [], "navigation_timeout_seconds": 0}, "must be a positive number"),
    ]:
        with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            config.parse(raw)


def test_wildcards_allow_subdomains_only():
    from workers.browser_worker.targets import url_allowed

    allowed = ("*.example.org", "docs.python.org")
    assert url_allowed("https://a.example.org/x", allowed)
    assert url_allowed("https://b.a.example.org/x", allowed)
    assert not url_allowed("https://example.org/", allowed)
    assert not url_allowed("https://badexample.org/", allowed)
    assert url_allowed("http://DOCS.python.org./3/", allowed)
    assert not url_allowed("https://docs.python.org.evil.com/", allowed)
    assert not url_allowed("ws://docs.python.org/", allowed)
