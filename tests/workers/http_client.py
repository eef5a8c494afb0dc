"""Real HTTP against a worker service started in this process (``serving``): a thread runs the server
on a free loopback port until the test ends."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from workers.jsonapi import JsonServer


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@contextlib.contextmanager
def serving(server: JsonServer) -> Iterator[JsonServer]:
    # A short poll interval: shutdown() waits for the loop to notice, once per test.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="service-under-test", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def call(
    port: int,
    method: str,
    path: str,
    body: object = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    connection: http.client.HTTPConnection | None = None,
) -> Answer:
    """One request; ``body`` is sent as JSON, ``raw`` as it is."""
    connection = connection or http.client.HTTPConnection(host, port, timeout=60)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    connection.request(
        method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    response = connection.getresponse()
    return Answer(response.status, response.headers, response.read())


def assert_error(answer: Answer, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The answer is the typed error body ``{"code", "message", "fields"}`` with this status and code."""
    assert answer.status == status, (answer.status, answer.body[:500])
    assert answer.headers["Content-Type"] == "application/json"
    error = answer.json()
    assert set(error) == {"code", "message", "fields"}, error
    assert error["code"] == code, error
    assert error["message"]
    if field is not None:
        assert field in error["fields"], error
    return error
