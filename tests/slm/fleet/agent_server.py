"""A scripted stand-in for the SLM's heartbeat endpoint, for the node agent's tests.

The real SLM's behaviour is tested against the live process (``test_agent.py``, ``TestAgainstLiveSlm``).
This stand-in lets a test choose each answer (200, 400, 401, 503 …) and take the server away, then records
every request exactly as it arrived.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from shared_contracts.schemas.fleet import HeartbeatAck, NodeState
from tests.fixtures.live_slm import free_port

ERROR_BODIES = {
    400: {"code": "validation_error", "message": "Invalid heartbeat.", "fields": {"cpu_percent": ["bad"]}},
    401: {"code": "not_authenticated", "message": "Invalid agent token.", "fields": {}},
    404: {"code": "not_found", "message": "No such node.", "fields": {}},
    503: {"code": "unavailable", "message": "Try again later.", "fields": {}},
}


@dataclass(frozen=True)
class Received:
    """One request as it arrived; header names lower-cased (HTTP header names are case-insensitive)."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def sequence(self) -> int:
        return json.loads(self.body)["sequence"]


class ScriptedSlm:
    """Answers ``status`` to every heartbeat, ``answers[sequence]`` to chosen ones, and 401 when
    ``expected_token`` is set and the bearer token differs. A 200 carries a ``HeartbeatAck`` that says
    ``duplicate`` for a sequence already accepted, as the real SLM does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.answers: dict[int, int] = {}
        self.expected_token: str | None = None
        self.requests: list[Received] = []
        self._accepted: set[int] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def delivered(self) -> list[int]:
        """Sequences answered with 200, in arrival order."""
        with self._lock:
            return [request.sequence for request in self.requests if request.status == 200]

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket: the agent sees "connection refused", as with a stopped SLM."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
        sequence = json.loads(body)["sequence"]
        with self._lock:
            status = self.answers.get(sequence, self.status)
            if self.expected_token is not None and headers.get("authorization") != (
                f"Bearer {self.expected_token}"
            ):
                status = 401
            self.requests.append(Received(path=path, headers=headers, body=body, status=status))
            if status != 200:
                error = ERROR_BODIES.get(status, {"code": "error", "message": "", "fields": {}})
                return status, {**error, "request_id": f"req-{len(self.requests)}"}
            duplicate = sequence in self._accepted
            self._accepted.add(sequence)
        ack = HeartbeatAck(
            accepted=not duplicate, duplicate=duplicate, sequence=sequence, state=NodeState.ONLINE
        )
        return 200, ack.model_dump(mode="json")


def _handler_for(slm: ScriptedSlm) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, reply = slm.answer(
                self.path, {name.lower(): value for name, value in self.headers.items()}, body
            )
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest's output quiet

    return Handler
