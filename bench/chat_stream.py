"""Streaming chat through one business ASGI process, against the same LLM called directly (issue 5).

Goal: the time to first token added by the websocket path — send a ``send`` frame on ``/ws/chat/``,
receive the first ``delta`` — over calling the provider directly, at p50 <= 15 ms and p95 <= 40 ms with
200 concurrent streams in one ASGI process; per-delta overhead p50 <= 0.5 ms; 2,000 idle authenticated
websockets held by that process. The ``figure`` is the added time to first token at p50, in ms.

Run from the virtualenv: ``python bench/chat_stream.py`` (``--help`` for the knobs). It sets up a fresh
database (PostgreSQL when 127.0.0.1:5432 answers, SQLite otherwise), a throwaway var dir and Redis
database ``AUTOBOT_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/6``: the channel layer, the
event buffer and the cache, as in production), one member user with a personal API token per stream,
and the scripted OpenAI-compatible server of the test suite (``tests/fixtures/scripted_llm.py``) in a
process of its own, registered as the default provider with ``ensure_default_provider``. It starts ONE
uvicorn process on ``business_project.config.asgi`` as the Procfile does (settings ``base``, no debug),
drives it from ``--clients`` load-generator processes (asyncio, uvloop, the ``websockets`` library),
checks every stream and the stored answers exactly, and tears everything down, even on failure. The
last line of output is the JSON object of ``docs/BENCHMARKS.md``.

Method. Every stream is the same script: a first token after ``--first-token-delay``, then ``--tokens``
tokens ``--token-delay`` apart. A *direct* round streams from the scripted server over HTTP (SSE, one
keep-alive connection per slot, as the ASGI process's pooled client does); a *websocket* round sends
``send`` frames (a new conversation each) on one authenticated websocket per slot. A round runs
``--streams`` slots concurrently, each ``--per-slot`` streams back to back (a closed loop, so about
``--streams`` streams are in flight all the time; the first starts are spread over one stream's length).
Rounds alternate direct, websocket, direct, websocket … after one warm-up pair, so both see the same
machine; figures are medians over the measured rounds.

Placement. The scripted provider and the load generators stand in for other machines. With two CPUs or
more, the ASGI process runs on the first CPU alone and they share the rest, in both kinds of round
(``--no-pin`` leaves every process to the scheduler). Left to the scheduler, a process woken by a
loopback socket tends to be put on the waker's CPU. The server then waited for the provider's burst of
writes to end, and the clients for the server's, while the other CPU mostly idled: the per-delta
overhead measured this machine's scheduler as much as the server (docs/BENCHMARKS.md).

The default stream is an answer of 256 tokens at 20 tokens/s (``--token-delay 50``): what one of 200
concurrent streams gets from a served model (a GPU server shared by that many requests gives each 10-40
tokens/s), so the process relays ~4,000 tokens/s and starts ~15 answers/s. The earlier default, 64
tokens 5 ms apart (200 tokens/s per stream, ~35,000 tokens/s and ~540 new answers/s offered), is kept as a
stress shape (``--tokens 64 --token-delay 5 --per-slot 5``): it measures where one process saturates.

- Time to first token (TTFT): from writing the request (direct) or the ``send`` frame (websocket) to
  receiving the first token / ``delta``. *Added TTFT* of a websocket stream: its TTFT minus the median
  direct TTFT of the paired round; its p50 (the figure) and p95 per round, median over rounds.
- The scripted server records, per request, when the request arrived and when it wrote each token
  (``time.monotonic``, the same clock in every process of the machine). So the added TTFT splits
  into *admission* (``send`` written → request at the provider: the database transaction, the buffer,
  the provider chain, the HTTP request) and *first relay* (first token written → first ``delta``
  received), each compared with the direct round's same spans.
- Per-delta overhead: the one-way latency of each later token (written by the provider → received by
  the client), websocket minus direct, at p50 (tokens 2..n, pooled over a round). Also shown: the p50 of
  (gap between two ``delta`` arrivals minus the gap between the provider writing them) and the mean of it (=
  the growth of the latency over a stream / its deltas).
- CPU of every process per round from ``/proc`` (ASGI process, scripted LLM server, load generators,
  the PostgreSQL backends of the database, the shared Redis server): a load generator or the scripted
  server saturating its core would be measuring itself.

Then ``--idle`` more websockets (tokens of the same users) are opened and held ``--hold`` seconds:
every one must still be open, must have received the server's heartbeats, and one more connection must
stream an answer; the server's memory per held connection is reported. Last, the exact check: every
stream had exactly one ``message_start``, deltas in ``seq`` order with no gap, exactly one
``message_end`` (``complete``), no ``error`` event and the scripted text; every stored assistant
message equals the text streamed for it; the usage ledger has one completed row per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import (
    REPO_DIR,
    START_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    ThrowawayDatabase,
    base_process_env,
    cpu_seconds,
    free_port,
    load_average,
    make_var_dir,
    median,
    open_files,
    percentile,
    raise_open_files_limit,
    remove_dir,
    rss_kib,
    say,
    wait_for_http,
)

BENCHMARK = "chat_stream"
GOAL = (
    "added time to first token p50 ≤ 15 ms and p95 ≤ 40 ms at 200 concurrent streams in one ASGI process; "
    "per-delta overhead p50 ≤ 0.5 ms; 2,000 idle authenticated websockets held"
)
GOAL_ADDED_P50_MS = 15.0
GOAL_ADDED_P95_MS = 40.0
GOAL_DELTA_P50_MS = 0.5
GOAL_STREAMS = 200
GOAL_IDLE = 2000

# A database of its own (CI and the test suites use 13-15, make run 0-1); only this run's keys are deleted.
REDIS_URL = os.environ.get("AUTOBOT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
CHANNEL_PREFIX = "business"  # the business settings' channel layer prefix (also the event buffer's)
MODEL = "scripted-model"  # tests/fixtures/scripted_llm.DEFAULT_MODEL
PROVIDER_NAME = "scripted"
CONTENT_PREFIX = "bench "  # a stream's user message is CONTENT_PREFIX + its tag
PROTOCOL = "autobot.chat.v1"  # business_project.chat.events.PROTOCOL (the bench never imports Django)
STREAM_TIMEOUT_SECONDS = 120
CONNECT_CONCURRENCY = 50  # handshakes in flight at once per load generator (a burst of 2,000 is no test)
RECORDS_PATH = "/bench/records"
OPEN_FILES_WANTED = 16384


# ==========================================================================================================
# The scripted provider (``--role llm``): the test suite's server, plus a clock on every token it writes
# ==========================================================================================================


class _ClockedWriter:
    """The response writer of one request: records when each content chunk is written."""

    def __init__(self, writer, times: list[float]) -> None:
        self._writer = writer
        self._times = times

    def write(self, data: bytes) -> None:
        if b'"content"' in data:
            self._times.append(time.monotonic())
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def __getattr__(self, name: str):
        return getattr(self._writer, name)


def serve_llm(args: argparse.Namespace) -> int:
    import uvloop

    from tests.fixtures.scripted_llm import ScriptedLlm

    class RecordingLlm(ScriptedLlm):
        """``records``: for each request whose last message is ``CONTENT_PREFIX + tag``, the request's
        arrival then the time each token was written. ``GET /bench/records`` hands them over and forgets
        them (and the requests the base class keeps)."""

        def __post_init__(self) -> None:
            super().__post_init__()
            self.records: dict[str, list[float]] = {}

        async def _respond(self, request, script, reader, writer) -> bytes:
            if request.path == RECORDS_PATH:
                body, self.records = json.dumps(self.records).encode(), {}
                self.requests.clear()
                self.disconnects.clear()
                await self._send(writer, 200, "application/json", body)
                return b""
            tag = None
            if request.method == "POST":
                with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                    content = request.json["messages"][-1]["content"]
                    if content.startswith(CONTENT_PREFIX):
                        tag = content[len(CONTENT_PREFIX) :]
            if tag is None:
                return await super()._respond(request, script, reader, writer)
            times = self.records[tag] = [request.at]
            leftover = await super()._respond(request, script, reader, _ClockedWriter(writer, times))
            # The base class ends a stream by cancelling its disconnect watcher (a pending read), and
            # reads the next request at once: before the cancellation has run, that read fails
            # ("readuntil() called while another coroutine is already waiting") and the keep-alive
            # connection is dropped. One turn of the loop lets the cancellation finish first.
            await asyncio.sleep(0)
            return leftover

    # The server's thread runs asyncio.run(): with this policy, on uvloop (a cheaper loop per token).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    server = RecordingLlm(port=args.port)
    server.script(
        tokens=script_tokens(args.tokens),
        first_token_delay=args.first_token_delay / 1000,
        token_delay=args.token_delay / 1000,
    )
    server.start()
    print(f"scripted LLM server on {server.url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


def script_tokens(count: int) -> list[str]:
    """Distinct tokens, so that a lost, doubled or reordered one shows in the text."""
    return [f" t{index:03d}" for index in range(count)]


# ==========================================================================================================
# The load generator (``--role client``): JSON-line commands on stdin, one JSON-line answer each
# ==========================================================================================================


class StreamFailed(Exception):
    pass


@dataclass
class Slot:
    index: int
    token: str
    socket: Any = None


@dataclass
class IdleSocket:
    socket: Any
    heartbeats: int = 0
    reader: asyncio.Task | None = None
    closed_early: str = ""


@dataclass
class LoadGenerator:
    config: dict[str, Any]
    slots: list[Slot] = field(default_factory=list)
    idle: list[IdleSocket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.slots = [Slot(i, token) for i, token in enumerate(self.config["slot_tokens"])]
        self.expected = "".join(self.config["script_tokens"])
        # Where each token of the script ends in the text: a delta may carry several tokens (the
        # protocol's "next piece"), and is timed against the provider's clock of its last one.
        self.token_ends: dict[int, int] = {}
        length = 0
        for count, token in enumerate(self.config["script_tokens"], start=1):
            length += len(token)
            self.token_ends[length] = count
        host, port = self.config["llm_host"], self.config["llm_port"]
        self.llm_address = (host, port)

    # --- websockets ---------------------------------------------------------------------------------

    async def connect(self, token: str):
        from websockets.asyncio.client import connect

        return await connect(
            f"{self.config['ws_url']}/ws/chat/",
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[PROTOCOL],
            compression=None if self.config["compression"] == "none" else "deflate",
            # The server pings (uvicorn's default, every 20 s); the client answers and sends none.
            ping_interval=None,
            open_timeout=60,
            close_timeout=5,
            max_queue=None,
            proxy=None,
        )

    async def connect_slots(self) -> dict[str, Any]:
        started = time.monotonic()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(slot: Slot) -> None:
            async with gate:
                slot.socket = await self.connect(slot.token)

        await asyncio.gather(*(one(slot) for slot in self.slots))
        return {"connected": len(self.slots), "seconds": time.monotonic() - started}

    async def ws_stream(self, slot: Slot, tag: str) -> dict[str, Any]:
        socket = slot.socket
        frame = json.dumps({"type": "send", "content": CONTENT_PREFIX + tag, "client_ref": tag})
        arrivals: list[float] = []
        texts: list[str] = []
        ends: list[int] = []
        length = 0
        problems: list[str] = []
        message_id = None
        next_seq = 1
        end: dict[str, Any] | None = None
        starts = 0
        sent = time.monotonic()
        await socket.send(frame)
        async with asyncio.timeout(STREAM_TIMEOUT_SECONDS):
            while True:
                raw = await socket.recv()
                now = time.monotonic()
                event = json.loads(raw)
                kind = event["type"]
                if kind == "heartbeat":
                    continue
                if kind == "message_start" and message_id is None and event.get("client_ref") == tag:
                    message_id = event["message_id"]
                elif event.get("message_id") is None and kind == "error":
                    problems.append(f"error {event.get('code')}: {event.get('message')}")
                    break  # a refused frame: no message follows
                elif event.get("message_id") != message_id:
                    problems.append(f"a {kind} of another message")
                    continue
                if event["seq"] is None:  # an error about the socket's reading of the message
                    problems.append(f"{kind} {event.get('code')}: {event.get('message')}")
                    break
                if event["seq"] != next_seq:
                    problems.append(f"seq {event['seq']} where {next_seq} was due")
                next_seq = event["seq"] + 1
                if kind == "message_start":
                    starts += 1
                elif kind == "delta":
                    arrivals.append(now)
                    texts.append(event["text"])
                    length += len(event["text"])
                    ends.append(self.token_ends.get(length, 0))
                elif kind == "error":
                    problems.append(f"error {event.get('code')}: {event.get('message')}")
                elif kind == "message_end":
                    end = event
                    break
        text = "".join(texts)
        if starts != 1:
            problems.append(f"{starts} message_start")
        if end is None:
            problems.append("no message_end")
        elif end.get("status") != "complete":
            problems.append(f"message_end status {end.get('status')}")
        if text != self.expected:
            problems.append(f"text of {len(texts)} deltas differs from the script")
        return {
            "tag": tag,
            "message_id": message_id,
            "sent": sent,
            "arrivals": [round(t, 6) for t in arrivals],
            "ends": ends,
            "end_seq": end["seq"] if end else None,
            "server_ttft_ms": end.get("time_to_first_token_ms") if end else None,
            "problems": problems,
        }

    # --- direct HTTP to the provider ----------------------------------------------------------------

    async def direct_stream(self, connection, tag: str) -> dict[str, Any]:
        reader, writer = connection
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": CONTENT_PREFIX + tag}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()
        host, port = self.llm_address
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        arrivals: list[float] = []
        texts: list[str] = []
        problems: list[str] = []
        sent = time.monotonic()
        writer.write(head + body)
        async with asyncio.timeout(STREAM_TIMEOUT_SECONDS):
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            if not status_and_headers.startswith(b"HTTP/1.1 200"):
                raise StreamFailed(status_and_headers[:100].decode("latin-1"))
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                now = time.monotonic()
                for line in data.split(b"\n"):
                    if not line.startswith(b"data: {"):
                        continue
                    choices = json.loads(line[6:]).get("choices")
                    content = choices[0]["delta"].get("content") if choices else None
                    if content:
                        arrivals.append(now)
                        texts.append(content)
        if "".join(texts) != self.expected:
            problems.append(f"text of {len(texts)} tokens differs from the script")
        ends = list(range(1, len(arrivals) + 1))  # one token per chunk: the scripted server's own
        return {"tag": tag, "sent": sent, "arrivals": [round(t, 6) for t in arrivals], "ends": ends,
                "problems": problems}  # fmt: skip

    # --- rounds -------------------------------------------------------------------------------------

    async def run_round(self, *, mode: str, label: str, per_slot: int, stagger: float, slots: int) -> dict:
        chosen = self.slots[:slots]
        connections: dict[int, tuple] = {}
        if mode == "direct":
            host, port = self.llm_address
            for slot in chosen:
                connections[slot.index] = await asyncio.open_connection(host, port)
        results: list[dict[str, Any]] = []
        failures: list[str] = []
        prefix = self.config["name"]

        async def run_slot(slot: Slot) -> None:
            await asyncio.sleep(random.uniform(0, stagger))
            for number in range(per_slot):
                tag = f"{label}-{prefix}{slot.index}-{number}"
                try:
                    if mode == "direct":
                        results.append(await self.direct_stream(connections[slot.index], tag))
                    else:
                        results.append(await self.ws_stream(slot, tag))
                except Exception as exc:  # every failure is reported; the slot reconnects and goes on
                    failures.append(f"{tag}: {exc.__class__.__name__}: {exc}")
                    try:
                        if mode == "direct":
                            connections[slot.index][1].close()
                            connections[slot.index] = await asyncio.open_connection(*self.llm_address)
                        else:
                            with contextlib.suppress(Exception):
                                await slot.socket.close()
                            slot.socket = await self.connect(slot.token)
                    except Exception as again:
                        failures.append(f"{tag}: reconnecting: {again.__class__.__name__}: {again}")
                        return

        started = time.monotonic()
        await asyncio.gather(*(run_slot(slot) for slot in chosen))
        wall = time.monotonic() - started
        for reader_writer in connections.values():
            reader_writer[1].close()
        return {"streams": results, "failures": failures, "wall": wall}

    # --- idle connections ---------------------------------------------------------------------------

    async def idle_open(self, count: int, tokens: list[str]) -> dict[str, Any]:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        failures: list[str] = []
        started = time.monotonic()

        async def read(idle: IdleSocket) -> None:
            try:
                async for raw in idle.socket:
                    if json.loads(raw).get("type") == "heartbeat":
                        idle.heartbeats += 1
            except Exception as exc:
                idle.closed_early = f"{exc.__class__.__name__}: {exc}"
            else:
                idle.closed_early = f"closed by the server ({idle.socket.close_code})"

        async def one(index: int) -> None:
            async with gate:
                try:
                    socket = await self.connect(tokens[index % len(tokens)])
                except Exception as exc:
                    failures.append(f"{exc.__class__.__name__}: {exc}")
                    return
            idle = IdleSocket(socket)
            idle.reader = asyncio.ensure_future(read(idle))
            self.idle.append(idle)

        await asyncio.gather(*(one(index) for index in range(count)))
        return {"opened": len(self.idle), "failures": failures[:5], "failed": len(failures),
                "seconds": time.monotonic() - started}  # fmt: skip

    def idle_check(self) -> dict[str, Any]:
        from websockets.protocol import State

        open_now = sum(1 for idle in self.idle if idle.socket.state is State.OPEN and not idle.closed_early)
        beats = [idle.heartbeats for idle in self.idle]
        closed = [idle.closed_early for idle in self.idle if idle.closed_early][:5]
        return {
            "held": len(self.idle),
            "open": open_now,
            "heartbeats_min": min(beats) if beats else 0,
            "heartbeats_total": sum(beats),
            "closed_examples": closed,
        }

    async def idle_close(self) -> dict[str, Any]:
        async def close(idle: IdleSocket) -> None:
            with contextlib.suppress(Exception):
                await idle.socket.close()
            if idle.reader is not None:
                idle.reader.cancel()

        await asyncio.gather(*(close(idle) for idle in self.idle))
        closed = len(self.idle)
        self.idle.clear()
        return {"closed": closed}

    async def probe(self, label: str) -> dict[str, Any]:
        """One stream on a new connection (while the idle ones are held)."""
        socket = await self.connect(self.slots[0].token)
        slot = Slot(-1, self.slots[0].token, socket)
        try:
            return await self.ws_stream(slot, f"{label}-{self.config['name']}probe")
        finally:
            await socket.close()

    async def close_all(self) -> None:
        await self.idle_close()
        for slot in self.slots:
            if slot.socket is not None:
                with contextlib.suppress(Exception):
                    await slot.socket.close()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader(limit=2**24)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        while True:
            line = await stdin.readline()
            if not line:
                break
            command = json.loads(line)
            name = command.pop("cmd")
            try:
                if name == "connect":
                    answer = await self.connect_slots()
                elif name == "round":
                    answer = await self.run_round(**command)
                elif name == "idle_open":
                    answer = await self.idle_open(**command)
                elif name == "idle_check":
                    answer = self.idle_check()
                elif name == "idle_close":
                    answer = await self.idle_close()
                elif name == "probe":
                    answer = await self.probe(**command)
                elif name == "quit":
                    break
                else:
                    answer = {"error": f"unknown command {name}"}
            except Exception as exc:
                answer = {"error": f"{exc.__class__.__name__}: {exc}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        await self.close_all()


def serve_client(args: argparse.Namespace) -> int:
    import uvloop

    raise_open_files_limit(OPEN_FILES_WANTED)
    config = json.loads(Path(args.config).read_text())
    uvloop.run(LoadGenerator(config).serve())
    return 0


# ==========================================================================================================
# The ASGI process under a profiler (``--role asgi``, only with ``--profile``)
# ==========================================================================================================


def serve_asgi_profiled(args: argparse.Namespace) -> int:
    """uvicorn as the Procfile starts it, inside yappi (CPU clock, every thread); the statistics are
    written when uvicorn has stopped (SIGTERM)."""
    import uvicorn
    import yappi

    # uvicorn restores the handlers it found and raises the signal that stopped it again: with this one
    # in place, that does not end the process before the statistics are written.
    signal.signal(signal.SIGTERM, lambda *_: None)
    yappi.set_clock_type("cpu")
    yappi.start(builtins=False)
    uvicorn.run(
        "business_project.config.asgi:application",
        host="127.0.0.1",
        port=args.port,
        lifespan="off",
        ws_per_message_deflate=False,
    )
    yappi.stop()
    stats = yappi.get_func_stats()
    out = Path(args.profile)
    stats.save(str(out.with_suffix(".pstat")), type="pstat")
    with out.open("w") as handle:
        handle.write("# by own time (tsub)\n")
        stats.sort("tsub").print_all(
            out=handle, columns={0: ("name", 110), 1: ("ncall", 10), 2: ("tsub", 8), 3: ("ttot", 8)}
        )
    threads = yappi.get_thread_stats()
    with out.open("a") as handle:
        handle.write("\n# threads\n")
        threads.print_all(out=handle)
    return 0


# ==========================================================================================================
# The orchestrator
# ==========================================================================================================

SEED_SCRIPT = r"""
import json
import sys
from pathlib import Path

import django

django.setup()

from django.contrib.auth import get_user_model
from django.db import transaction

from business_project.accounts.services import api_token_create

count, out = int(sys.argv[1]), Path(sys.argv[2])
User = get_user_model()
tokens = []
with transaction.atomic():
    for index in range(count):
        # No password (no hashing: the bench signs in with tokens only).
        user = User.objects.create_user(username=f"bench-{index:04d}", password=None, role="member")
        tokens.append(api_token_create(user=user, name="bench", scopes=["chat:read", "chat:write"])[1])
out.touch(mode=0o600)
out.write_text(json.dumps(tokens))
print(User.objects.count())
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=GOAL_STREAMS, help="concurrent streams (slots)")
    parser.add_argument(
        "--per-slot", type=int, default=2, help="streams each slot runs back to back per round"
    )
    parser.add_argument("--tokens", type=int, default=256, help="tokens per answer")
    parser.add_argument("--first-token-delay", type=float, default=50.0, help="ms before the first token")
    parser.add_argument("--token-delay", type=float, default=50.0, help="ms between tokens")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (direct and websocket each)")
    parser.add_argument("--unloaded", type=int, default=5, help="streams of the one-slot rounds (0: none)")
    parser.add_argument("--idle", type=int, default=GOAL_IDLE, help="idle websockets to hold (0: none)")
    parser.add_argument("--hold", type=int, default=35, help="seconds to hold them (heartbeats every 15 s)")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="permessage-deflate as browsers offer it, or none",
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave every process to the scheduler (default: the server on one CPU, the harness on the rest)",
    )
    parser.add_argument("--sqlite", action="store_true", help="use SQLite even when PostgreSQL answers")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        default="",
        help="run the ASGI process under yappi (pip install yappi) and write its statistics to PATH",
    )
    parser.add_argument("--keep", action="store_true", help="print the var dir and keep it (logs)")
    # The child processes of the bench.
    parser.add_argument(
        "--role", choices=["main", "llm", "client", "asgi"], default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--config", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "main":
        if not (1 <= args.streams <= 5000 and 1 <= args.per_slot <= 1000 and 1 <= args.tokens <= 10_000):
            parser.error("streams 1-5000, per-slot 1-1000, tokens 1-10000")
        if not (0 <= args.first_token_delay <= 10_000 and 0 <= args.token_delay <= 10_000):
            parser.error("delays 0-10000 ms")
        if not (1 <= args.rounds <= 9 and 0 <= args.idle <= 20_000 and 0 <= args.hold <= 600):
            parser.error("rounds 1-9, idle 0-20000, hold 0-600 s")
        if not 1 <= args.clients <= min(8, args.streams):
            parser.error("clients 1-8, at most one per stream")
    return args


# --- processes -------------------------------------------------------------------------------------------


@dataclass
class Process:
    """A child process in its own session (its group is signalled at the end), output to a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    stdin: bool = False
    stdout_pipe: bool = False
    stop_timeout: float = STOP_TIMEOUT_SECONDS
    cpus: frozenset[int] = frozenset()  # the CPUs it may run on (empty: wherever the scheduler puts it)
    process: subprocess.Popen | None = None

    def start(self) -> Process:
        log = self.log_path.open("ab")
        # A child inherits the affinity of the process that starts it, every thread it starts included.
        before = os.sched_getaffinity(0)
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        try:
            self.process = subprocess.Popen(
                self.args,
                cwd=REPO_DIR,
                env=self.env,
                stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.stdout_pipe else log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            if self.cpus:
                os.sched_setaffinity(0, before)
        log.close()
        return self

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.process = None


class Clients:
    """The load-generator processes: each gets the same command, answers with one JSON line."""

    def __init__(self, processes: list[Process]) -> None:
        self.processes = processes

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def ask(self, commands: list[dict[str, Any]], timeout: float = 900) -> list[dict[str, Any]]:
        for process, command in zip(self.processes, commands, strict=True):
            process.process.stdin.write((json.dumps(command) + "\n").encode())
            process.process.stdin.flush()
        answers: list[dict[str, Any] | None] = [None] * len(self.processes)

        def read(index: int) -> None:
            line = self.processes[index].process.stdout.readline()
            answers[index] = json.loads(line) if line else {"error": "the load generator exited"}

        threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(self.processes))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout)
        for index, answer in enumerate(answers):
            if answer is None:
                raise RuntimeError(f"load generator {index} did not answer within {timeout} s")
            if "error" in answer:
                raise RuntimeError(
                    f"load generator {index}: {answer['error']}\n{self.processes[index].log_tail()}"
                )
        return answers  # type: ignore[return-value]

    def all(self, command: dict[str, Any], timeout: float = 900) -> list[dict[str, Any]]:
        return self.ask([dict(command) for _ in self.processes], timeout)

    def quit(self) -> None:
        for process in self.processes:
            if process.process is not None and process.process.poll() is None:
                with contextlib.suppress(OSError):
                    process.process.stdin.write(b'{"cmd": "quit"}\n')
                    process.process.stdin.flush()
        deadline = time.monotonic() + 10
        for process in self.processes:
            if process.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            process.stop()


def redis_server_pid(client) -> int:
    try:
        return int(client.info("server")["process_id"])
    except Exception:
        return 0


def fetch_records(llm_url: str) -> dict[str, list[float]]:
    import urllib.request

    with urllib.request.urlopen(f"{llm_url}{RECORDS_PATH}", timeout=60) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


# --- analysis --------------------------------------------------------------------------------------------


def analyse(streams: list[dict], records: dict[str, list[float]]) -> dict[str, Any]:
    """Spans of one round's streams (ms), with the provider's clock for each (see the docstring)."""
    ttft, admission, relay, latency, gap_added = [], [], [], [], []
    per_stream_gap_mean = []
    unmatched = 0
    for stream in streams:
        arrivals = stream["arrivals"]
        if not arrivals:
            continue
        ttft.append((arrivals[0] - stream["sent"]) * 1000)
        times = records.get(stream["tag"])
        ends = stream["ends"]
        if not times or len(times) - 1 < max(ends) or min(ends) < 1:
            unmatched += 1
            continue
        arrived_at = times[0]
        # When the provider wrote the last token each delta carries.
        emitted = [times[end] for end in ends]
        admission.append((arrived_at - stream["sent"]) * 1000)
        relay.append((arrivals[0] - emitted[0]) * 1000)
        for k in range(1, len(arrivals)):
            latency.append((arrivals[k] - emitted[k]) * 1000)
            gap_added.append(((arrivals[k] - arrivals[k - 1]) - (emitted[k] - emitted[k - 1])) * 1000)
        if len(arrivals) > 1:
            growth = (arrivals[-1] - emitted[-1]) - (arrivals[0] - emitted[0])
            per_stream_gap_mean.append(growth * 1000 / (len(arrivals) - 1))
    deltas = sum(len(stream["arrivals"]) for stream in streams)
    tokens = sum(stream["ends"][-1] for stream in streams if stream["ends"])

    def p(values: list[float], pct: float) -> float | None:
        return percentile(values, pct) if values else None

    return {
        "streams": len(streams),
        "deltas": deltas,
        "tokens": tokens,
        "unmatched": unmatched,
        "ttft_p50": p(ttft, 50),
        "ttft_p95": p(ttft, 95),
        "ttft": ttft,
        "admission_p50": p(admission, 50),
        "admission_p95": p(admission, 95),
        "relay_p50": p(relay, 50),
        "relay_p95": p(relay, 95),
        "latency_p50": p(latency, 50),
        "latency_p95": p(latency, 95),
        "gap_added_p50": p(gap_added, 50),
        "gap_added_mean": (sum(per_stream_gap_mean) / len(per_stream_gap_mean))
        if per_stream_gap_mean
        else None,
    }


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def describe(label: str, result: dict[str, Any]) -> str:
    return (
        f"  {label:<10} TTFT p50 {fmt(result['ttft_p50'])} ms p95 {fmt(result['ttft_p95'])} ms | "
        f"request at provider p50 {fmt(result['admission_p50'])} ms p95 {fmt(result['admission_p95'])} | "
        f"first token relay p50 {fmt(result['relay_p50'], 2)} | later tokens latency p50 "
        f"{fmt(result['latency_p50'], 2)} p95 {fmt(result['latency_p95'], 2)} ms | "
        f"{result['streams']} streams, {result['tokens']} tokens in {result['deltas']} events in "
        f"{result['wall']:.1f} s ({result['tokens'] / result['wall']:.0f} tokens/s)"
    )


# --- the benchmark ---------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    cleanup: ExitStack
    var_dir: Path = Path()
    database: ThrowawayDatabase | None = None
    llm: Process | None = None
    llm_url: str = ""
    asgi: Process | None = None
    asgi_port: int = 0
    clients: Clients | None = None
    redis: Any = None
    redis_pid: int = 0
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(40))
    tokens: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    ws_streams: list[dict] = field(default_factory=list)
    direct_streams: list[dict] = field(default_factory=list)
    server_cpus: frozenset[int] = frozenset()
    harness_cpus: frozenset[int] = frozenset()

    def place(self) -> str:
        """The ASGI process gets the first CPU to itself; the scripted provider and the load generators
        share the others, in both kinds of round ("Placement" in the module's docstring says why). Not
        with ``--no-pin`` or a single CPU. PostgreSQL and Redis stay where the scheduler puts them.
        Returns what was done, for the report."""
        available = sorted(os.sched_getaffinity(0))
        if not self.args.pin or len(available) < 2:
            why = "--no-pin" if not self.args.pin else "one CPU"
            return f"CPUs: not pinned ({why}): the scheduler places every process"
        self.server_cpus = frozenset(available[:1])
        self.harness_cpus = frozenset(available[1:])
        return (
            f"CPUs: the ASGI process on {sorted(self.server_cpus)}; the scripted provider and the load "
            f"generators on {sorted(self.harness_cpus)} (both kinds of round; --no-pin: none pinned)"
        )

    # --- set-up -------------------------------------------------------------------------------------

    def business_env(self) -> dict[str, str]:
        env = base_process_env()
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "business_project.config.settings.base",
                "BUSINESS_VAR_DIR": str(self.var_dir),
                "BUSINESS_DATABASE_URL": self.database.url,
                "BUSINESS_REDIS_URL": REDIS_URL,
                "BUSINESS_SECRET_KEY": self.secret_key,
                "BUSINESS_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "BUSINESS_DEBUG": "false",
                # No embedded llama.cpp: the scripted server is the only provider.
                "BUSINESS_LLM_LOCAL_ENABLED": "false",
                "BUSINESS_LLM_DEFAULT_PROVIDER_NAME": PROVIDER_NAME,
                "BUSINESS_LLM_DEFAULT_KIND": "openai",
                "BUSINESS_LLM_DEFAULT_BASE_URL": self.llm_url,
                "BUSINESS_LLM_DEFAULT_MODEL": MODEL,
                # Members may send 20 a minute; a closed loop sends far more. The quota is still checked
                # (the same queries), against a limit the bench never reaches.
                "BUSINESS_CHAT_QUOTA_MEMBER_RPM": "100000000",
                "BUSINESS_CHAT_QUOTA_MEMBER_TOKENS_PER_DAY": "unlimited",
                # Nothing here talks to the SLM; a closed port makes sure of it.
                "BUSINESS_SLM_API_URL": "http://127.0.0.1:9",
            }
        )
        return env

    def manage(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [sys.executable, *args],
            cwd=REPO_DIR,
            env=self.business_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result.stdout

    def check_redis(self) -> None:
        import redis

        self.redis = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise RuntimeError(f"Redis does not answer at {REDIS_URL} ({exc}); the chat needs it") from None
        self.redis_pid = redis_server_pid(self.redis)

    def start_llm(self) -> None:
        port = free_port()
        self.llm_url = f"http://127.0.0.1:{port}"
        args = self.args
        self.llm = Process(
            "llm",
            [
                sys.executable,
                __file__,
                "--role",
                "llm",
                "--port",
                str(port),
                "--tokens",
                str(args.tokens),
                "--first-token-delay",
                str(args.first_token_delay),
                "--token-delay",
                str(args.token_delay),
            ],
            base_process_env(),
            self.var_dir / "llm.log",
            cpus=self.harness_cpus,
        ).start()
        self.cleanup.callback(self.llm.stop)
        wait_for_http(f"{self.llm_url}/v1/models", timeout=START_TIMEOUT_SECONDS, process=self.llm.process)

    def start_asgi(self) -> None:
        self.asgi_port = free_port()
        if self.args.profile:
            command = [sys.executable, __file__, "--role", "asgi", "--port", str(self.asgi_port)]
            command += ["--profile", str(Path(self.args.profile).resolve())]
        else:
            # As the Procfile's business-web.
            command = [sys.executable, "-m", "uvicorn", "business_project.config.asgi:application"]
            command += ["--host", "127.0.0.1", "--port", str(self.asgi_port), "--lifespan", "off"]
            command += ["--ws-per-message-deflate", "false"]
        # The server holds the idle sockets, the stream sockets and its upstream connections.
        self.asgi = Process(
            "asgi", command, self.business_env(), self.var_dir / "asgi.log", cpus=self.server_cpus
        )
        if self.args.profile:
            self.asgi.stop_timeout = 300  # writing the statistics takes a while
        self.asgi.start()
        self.cleanup.callback(self.asgi.stop)
        try:
            wait_for_http(
                f"http://127.0.0.1:{self.asgi_port}/healthz",
                timeout=START_TIMEOUT_SECONDS,
                process=self.asgi.process,
            )
        except Exception:
            raise RuntimeError(f"the ASGI process did not start; log:\n{self.asgi.log_tail()}") from None

    def start_clients(self) -> None:
        count = self.args.clients
        processes = []
        for index in range(count):
            config = {
                "name": f"c{index}-",
                "ws_url": f"ws://127.0.0.1:{self.asgi_port}",
                "llm_host": "127.0.0.1",
                "llm_port": int(self.llm_url.rsplit(":", 1)[1]),
                "slot_tokens": self.tokens[index::count],
                "script_tokens": script_tokens(self.args.tokens),
                "compression": self.args.compression,
            }
            path = self.var_dir / f"client-{index}.json"
            path.touch(mode=0o600)
            path.write_text(json.dumps(config))
            processes.append(
                Process(
                    f"client-{index}",
                    [sys.executable, __file__, "--role", "client", "--config", str(path)],
                    base_process_env(),
                    self.var_dir / f"client-{index}.log",
                    stdin=True,
                    stdout_pipe=True,
                    cpus=self.harness_cpus,
                ).start()
            )
        self.clients = Clients(processes)
        self.cleanup.callback(self.clients.quit)

    def forget_redis_keys(self) -> None:
        """Delete the event buffers and stop groups of this run's messages (the Redis database may be
        shared, so nothing else)."""
        if self.redis is None or self.database is None or not self.database.name:
            return
        with contextlib.suppress(Exception):
            ids = [
                row[0] for row in self.database.rows("SELECT id FROM chat_message WHERE role = 'assistant'")
            ]
            keys = [f"{CHANNEL_PREFIX}:chat-events:{message_id}" for message_id in ids]
            # A stop listener that died without leaving its group leaves the group behind for a day.
            keys += [f"{CHANNEL_PREFIX}:group:chat-stop.{message_id}" for message_id in ids]
            for start in range(0, len(keys), 500):
                self.redis.delete(*keys[start : start + 500])

    # --- measurement --------------------------------------------------------------------------------

    def cpu_snapshot(self) -> dict[str, float]:
        snapshot = {
            "asgi": cpu_seconds([self.asgi.pid]),
            "llm": cpu_seconds([self.llm.pid]),
            "clients": cpu_seconds(self.clients.pids),
            "redis": cpu_seconds([self.redis_pid]) if self.redis_pid else 0.0,
        }
        pids = self.database.backend_pids() if self.database.engine == "postgresql" else []
        snapshot["postgres"] = {pid: cpu_seconds([pid]) for pid in pids}  # type: ignore[assignment]
        return snapshot

    def cpu_used(self, before: dict, after: dict, wall: float) -> dict[str, float]:
        used = {kind: after[kind] - before[kind] for kind in ("asgi", "llm", "clients", "redis")}
        # Backends that started during the round count from zero; ones that ended in it are missed.
        used["postgres"] = sum(
            max(0.0, cpu - before["postgres"].get(pid, 0.0)) for pid, cpu in after["postgres"].items()
        )
        used["wall"] = wall
        return used

    def round(self, *, mode: str, label: str, slots: int, per_slot: int, stagger: float) -> dict[str, Any]:
        count = len(self.clients.processes)
        share = [slots // count + (1 if index < slots % count else 0) for index in range(count)]
        commands = [
            {
                "cmd": "round",
                "mode": mode,
                "label": label,
                "per_slot": per_slot,
                "stagger": stagger,
                "slots": n,
            }
            for n in share
        ]
        active = [index for index, n in enumerate(share) if n]
        fetch_records(self.llm_url)  # forget anything earlier
        before = self.cpu_snapshot()
        started = time.monotonic()
        answers = Clients([self.clients.processes[i] for i in active]).ask([commands[i] for i in active])
        wall = time.monotonic() - started
        after = self.cpu_snapshot()
        streams = [stream for answer in answers for stream in answer["streams"]]
        failures = [failure for answer in answers for failure in answer["failures"]]
        result = analyse(streams, fetch_records(self.llm_url))
        result.update(wall=wall, failures=failures, cpu=self.cpu_used(before, after, wall), mode=mode)
        result["problems"] = [f"{s['tag']}: {p}" for s in streams for p in s["problems"]]
        (self.ws_streams if mode == "ws" else self.direct_streams).extend(streams)
        if failures:
            self.problems.extend(failures[:20])
        if result["problems"]:
            self.problems.extend(result["problems"][:20])
        if result["unmatched"]:
            self.problems.append(f"{label}: {result['unmatched']} streams without the provider's timings")
        return result

    def describe_cpu(self, result: dict[str, Any]) -> str:
        cpu, wall = result["cpu"], result["cpu"]["wall"]
        tokens = max(1, result["tokens"])
        shares = ", ".join(
            f"{kind} {cpu[kind]:.1f} s ({cpu[kind] / wall * 100:.0f}%)"
            for kind in ("asgi", "clients", "llm", "redis", "postgres")
        )
        per_message = cpu["asgi"] * 1000 / max(1, result["streams"])
        per_token = cpu["asgi"] * 1e6 / tokens
        return f"    CPU: {shares}; ASGI {per_token:.0f} µs per token, {per_message:.1f} ms per message"


def main() -> int:
    args = parse_args()
    if args.role == "llm":
        return serve_llm(args)
    if args.role == "client":
        return serve_client(args)
    if args.role == "asgi":
        return serve_asgi_profiled(args)
    if args.profile:
        import importlib.util

        if importlib.util.find_spec("yappi") is None:
            raise SystemExit("--profile needs yappi in the virtualenv: .venv/bin/pip install yappi")

    files = raise_open_files_limit(OPEN_FILES_WANTED)
    needed = args.idle + 2 * args.streams + 200
    nominal_ms = args.first_token_delay + args.tokens * args.token_delay
    say(
        f"# {BENCHMARK}: {args.streams} concurrent streams of {args.tokens} tokens (first after "
        f"{args.first_token_delay:g} ms, then every {args.token_delay:g} ms: {nominal_ms:g} ms each), "
        f"one ASGI process; goal {GOAL}"
    )
    say(
        f"offered in the loaded rounds: {args.streams} streams in flight, back to back, so about "
        f"{args.streams * args.tokens / nominal_ms * 1000:,.0f} tokens/s and "
        f"{args.streams / nominal_ms * 1000:,.0f} new messages/s if nothing were added"
    )
    say(f"load average before set-up: {load_average()}  (cores: {os.cpu_count()}); open files limit {files}")
    if files < needed:
        say(f"warning: the open files limit {files} is below the {needed} sockets the run holds")

    bench_result: dict[str, Any] = {}
    with ExitStack() as cleanup:
        bench = Bench(args=args, cleanup=cleanup)
        bench.var_dir = make_var_dir("autobot-bench-chat-")
        if args.keep:
            say(f"var dir (kept): {bench.var_dir}")
        else:
            cleanup.callback(remove_dir, bench.var_dir)
        bench.check_redis()
        bench.database = ThrowawayDatabase(var_dir=bench.var_dir, prefer_postgres=not args.sqlite).create()
        cleanup.callback(bench.database.drop)
        cleanup.callback(bench.forget_redis_keys)
        say(
            f"database: {bench.database.engine} "
            f"({'throwaway ' + bench.database.name if bench.database.engine == 'postgresql' else 'SQLite'}); "
            f"Redis {REDIS_URL} (channel layer, event buffer, cache)"
        )

        say(bench.place())
        started = time.monotonic()
        bench.start_llm()
        bench.manage("manage_business.py", "migrate", "--noinput", "-v0")
        tokens_file = bench.var_dir / "tokens.json"
        bench.manage("-c", SEED_SCRIPT, str(args.streams), str(tokens_file))
        bench.tokens = json.loads(tokens_file.read_text())
        provider = bench.manage("manage_business.py", "ensure_default_provider").strip().splitlines()[-1]
        say(f"set-up ({time.monotonic() - started:.1f} s): migrate, {len(bench.tokens)} members with tokens")
        say(f"  {provider}")
        bench.start_asgi()
        profiled = " under yappi" if args.profile else ""
        server = (
            "uvicorn business_project.config.asgi (as the Procfile: uvloop, httptools, websockets-sansio, "
            f"no permessage-deflate, access log on){profiled}"
        )
        say(f"server: one {server}, pid {bench.asgi.pid}; scripted LLM server pid {bench.llm.pid}")
        bench.start_clients()
        say(
            f"load: {args.clients} load-generator processes (asyncio + uvloop + websockets, "
            f"compression {args.compression}), pids {bench.clients.pids}"
        )
        rss_start = rss_kib(bench.asgi.pid)
        connected = bench.clients.all({"cmd": "connect"})
        say(
            f"{sum(a['connected'] for a in connected)} websockets connected in "
            f"{max(a['seconds'] for a in connected):.1f} s; ASGI RSS {rss_start // 1024} → "
            f"{rss_kib(bench.asgi.pid) // 1024} MiB"
        )

        # Unloaded: one slot, streams one after another (what the path costs without contention).
        unloaded: dict[str, dict] = {}
        if args.unloaded:
            for mode in ("direct", "ws", "direct", "ws"):
                result = bench.round(mode=mode, label=f"u{mode}", slots=1, per_slot=args.unloaded, stagger=0)
                unloaded[mode] = result
            say(f"unloaded (one stream at a time, {args.unloaded} each; second of two runs):")
            say(describe("direct", unloaded["direct"]))
            say(describe("websocket", unloaded["ws"]))

        # Warm-up pair, then the measured pairs.
        stagger = nominal_ms / 1000
        pairs = []
        for number in range(args.rounds + 1):
            label = "warm-up" if number == 0 else f"round {number}/{args.rounds}"
            say(f"{label} (load average {load_average()})")
            pair = {}
            for mode in ("direct", "ws"):
                result = bench.round(
                    mode=mode,
                    label=f"r{number}{mode}",
                    slots=args.streams,
                    per_slot=args.per_slot,
                    stagger=stagger,
                )
                say(describe("direct" if mode == "direct" else "websocket", result))
                say(bench.describe_cpu(result))
                if result["failures"]:
                    say(f"    failures: {len(result['failures'])}, e.g. {result['failures'][:2]}")
                pair[mode] = result
            if number:
                pairs.append(pair)

        # Idle connections.
        idle_summary: dict[str, Any] = {"held": 0}
        if args.idle:
            count = len(bench.clients.processes)
            share = [args.idle // count + (1 if index < args.idle % count else 0) for index in range(count)]
            rss_before, fds_before = rss_kib(bench.asgi.pid), open_files(bench.asgi.pid)
            cpu_before = cpu_seconds([bench.asgi.pid])
            opened = bench.clients.ask(
                [{"cmd": "idle_open", "count": n, "tokens": bench.tokens} for n in share], timeout=1200
            )
            rss_open, fds_open = rss_kib(bench.asgi.pid), open_files(bench.asgi.pid)
            total_opened = sum(a["opened"] for a in opened)
            failed = sum(a["failed"] for a in opened)
            say(
                f"idle: {total_opened} websockets opened ({failed} failed"
                f"{', e.g. ' + str(opened[0]['failures'][:1]) if failed else ''}) in "
                f"{max(a['seconds'] for a in opened):.1f} s, ASGI CPU "
                f"{(cpu_seconds([bench.asgi.pid]) - cpu_before) * 1000 / max(1, total_opened):.1f} ms per "
                f"handshake; ASGI RSS {rss_before // 1024} → {rss_open // 1024} MiB "
                f"({(rss_open - rss_before) / max(1, total_opened):.0f} KiB per connection), "
                f"file descriptors {fds_before} → {fds_open}"
            )
            cpu_hold = cpu_seconds([bench.asgi.pid])
            time.sleep(args.hold)
            hold_cpu = cpu_seconds([bench.asgi.pid]) - cpu_hold
            checks = bench.clients.all({"cmd": "idle_check"})
            still_open = sum(c["open"] for c in checks)
            beats_min = min(c["heartbeats_min"] for c in checks)
            probe = Clients(bench.clients.processes[:1]).ask([{"cmd": "probe", "label": "idle"}])[0]
            probe_ok = not probe["problems"] and bool(probe["arrivals"])
            bench.ws_streams.append(probe)
            if not probe_ok:
                bench.problems.append(f"stream beside the idle sockets: {probe['problems']}")
            probe_ttft = (probe["arrivals"][0] - probe["sent"]) * 1000 if probe["arrivals"] else None
            rss_held = rss_kib(bench.asgi.pid)
            closed_examples = [e for c in checks for e in c["closed_examples"]][:3]
            say(
                f"idle: held {args.hold} s: {still_open}/{total_opened} still open"
                f"{' (closed: ' + str(closed_examples) + ')' if closed_examples else ''}, "
                f"each got ≥ {beats_min} heartbeats; ASGI CPU while holding {hold_cpu:.2f} s "
                f"({hold_cpu / max(1, args.hold) * 100:.1f}%); RSS {rss_held // 1024} MiB; one more stream "
                f"on a new connection {'ok' if probe_ok else 'FAILED'} (TTFT {fmt(probe_ttft)} ms)"
            )
            bench.clients.all({"cmd": "idle_close"})
            idle_ok = still_open == total_opened == args.idle and probe_ok and beats_min >= args.hold // 15
            if not idle_ok:
                bench.problems.append(
                    f"idle: {still_open} of {args.idle} open, heartbeats ≥ {beats_min}, stream ok {probe_ok}"
                )
            idle_summary = {
                "held": still_open,
                "wanted": args.idle,
                "ok": idle_ok,
                "rss_kib_per_connection": round((rss_open - rss_before) / max(1, total_opened), 1),
                "probe_ttft_ms": round(probe_ttft, 1) if probe_ttft is not None else None,
                "hold_cpu_percent": round(hold_cpu / max(1, args.hold) * 100, 2),
            }

        # Exact check against the database (give the last final writes a moment).
        time.sleep(1)
        correct = verify(bench)
        log_tail = bench.asgi.log_tail(6000)
        errors_in_log = [
            line
            for line in log_tail.splitlines()
            if " ERROR " in line or "Traceback" in line or "WARNING" in line
        ]
        if errors_in_log:
            say("ASGI log, warnings and errors (tail):\n" + "\n".join(errors_in_log[-15:]))
        say(f"load average after the runs: {load_average()}")
        bench.clients.quit()
        bench.asgi.stop()  # before the database is dropped; also writes the profile
        if args.profile:
            say(f"profile of the ASGI process: {args.profile} (and .pstat)")
        bench_result = summarise(args, bench, pairs, unloaded, idle_summary, correct, server)

    print(json.dumps(bench_result, ensure_ascii=False), flush=True)
    return 0 if bench_result["correct"] else 1


def verify(bench: Bench) -> bool:
    """Every stream exact (the load generators checked order, count and text), and every stored answer
    the scripted text, complete, with the ``seq`` of the ``message_end`` that was streamed for it."""
    expected = "".join(script_tokens(bench.args.tokens))
    streams = bench.ws_streams
    stream_ids = {s["message_id"]: s for s in streams if s["message_id"]}
    rows = bench.database.rows(
        "SELECT id, content, status, last_seq FROM chat_message WHERE role = 'assistant'"
    )
    stored = {str(row[0]): row for row in rows}
    wrong_rows = [row for row in stored.values() if row[1] != expected or row[2] != "complete"]
    unlike_stream = [
        message_id
        for message_id, stream in stream_ids.items()
        if stream["end_seq"] is not None
        and (message_id not in stored or stored[message_id][3] != stream["end_seq"])
    ]
    extra = set(stored) - set(stream_ids)
    usage = dict(bench.database.rows("SELECT outcome, COUNT(*) FROM chat_usagerecord GROUP BY outcome"))
    ws_problems = [s for s in streams if s["problems"]]
    direct_problems = [s for s in bench.direct_streams if s["problems"]]
    fine = (
        not bench.problems
        and not wrong_rows
        and not unlike_stream
        and not extra
        and not ws_problems
        and not direct_problems
        and len(stream_ids) == len(streams)
        and usage == {"complete": len(streams)}
    )
    say(
        f"check {'ok' if fine else 'FAILED'}: {len(streams)} websocket streams should each have one "
        f"message_start, deltas in seq order, one message_end (complete), no error, "
        f"the scripted text: {len(ws_problems)} did not; {len(direct_problems)} of "
        f"{len(bench.direct_streams)} direct streams did not; stored answers {len(stored)}: "
        f"{len(wrong_rows)} not complete with the scripted text, {len(unlike_stream)} unlike their "
        f"message_end, {len(extra)} never reached a client (a stream that failed); usage ledger {usage}"
    )
    kinds: dict[str, int] = {}
    for problem in [p for s in ws_problems for p in s["problems"]] + bench.problems:
        kind = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\b\d+\b", "N", problem.split(": ", 1)[-1])[:120]
        kinds[kind] = kinds.get(kind, 0) + 1
    for kind, count in sorted(kinds.items(), key=lambda item: -item[1])[:8]:
        say(f"  {count:6d} x {kind}")
    return fine


def summarise(args, bench: Bench, pairs, unloaded, idle, correct: bool, server: str) -> dict[str, Any]:
    """The JSON line: medians over the measured rounds of each round's figure."""

    def added(pair: dict, pct: float) -> float:
        baseline = pair["direct"]["ttft_p50"]
        return percentile([value - baseline for value in pair["ws"]["ttft"]], pct)

    def med(values: list[float | None]) -> float | None:
        values = [value for value in values if value is not None]
        return round(median(values), 3) if values else None

    def diff(pair: dict, key: str) -> float | None:
        ws, direct = pair["ws"][key], pair["direct"][key]
        return None if ws is None or direct is None else ws - direct

    added_p50 = med([added(pair, 50) for pair in pairs])
    added_p95 = med([added(pair, 95) for pair in pairs])
    direct_p50 = med([pair["direct"]["ttft_p50"] for pair in pairs])
    ws_p50 = med([pair["ws"]["ttft_p50"] for pair in pairs])
    per_delta = med([diff(pair, "latency_p50") for pair in pairs])
    cpu_per_token_us = med([pair["ws"]["cpu"]["asgi"] * 1e6 / max(1, pair["ws"]["tokens"]) for pair in pairs])
    cpu_shares = {
        kind: med([pair["ws"]["cpu"][kind] / pair["ws"]["cpu"]["wall"] for pair in pairs])
        for kind in ("asgi", "clients", "llm", "redis", "postgres")
    }
    goal_met = (
        added_p50 is not None
        and added_p50 <= GOAL_ADDED_P50_MS
        and added_p95 <= GOAL_ADDED_P95_MS
        and per_delta is not None
        and per_delta <= GOAL_DELTA_P50_MS
        and args.streams >= GOAL_STREAMS
        and idle.get("held", 0) >= GOAL_IDLE
        and bool(idle.get("ok"))
    )
    say(
        f"result: added TTFT p50 {fmt(added_p50)} ms, p95 {fmt(added_p95)} ms (websocket TTFT p50 "
        f"{fmt(ws_p50)} ms vs direct {fmt(direct_p50)} ms); per-delta overhead p50 {fmt(per_delta, 2)} ms; "
        f"ASGI CPU {fmt(cpu_per_token_us, 0)} µs per token; idle websockets held {idle.get('held', 0)}; "
        f"goal {'met' if goal_met else 'MISSED'}; correctness {'OK' if correct else 'FAILED'}"
    )
    unloaded_added = None
    if unloaded:
        unloaded_added = unloaded["ws"]["ttft_p50"] - unloaded["direct"]["ttft_p50"]
    return {
        "benchmark": BENCHMARK,
        "figure": None if added_p50 is None else round(added_p50, 1),
        "unit": "ms",
        "goal": GOAL,
        "baseline": None if direct_p50 is None else round(direct_p50, 1),
        "ratio": None if not (ws_p50 and direct_p50) else round(ws_p50 / direct_p50, 3),
        "added_ttft_p95_ms": None if added_p95 is None else round(added_p95, 1),
        "ws_ttft_p50_ms": ws_p50,
        "direct_ttft_p95_ms": med([pair["direct"]["ttft_p95"] for pair in pairs]),
        "ws_ttft_p95_ms": med([pair["ws"]["ttft_p95"] for pair in pairs]),
        "admission_added_p50_ms": med([diff(pair, "admission_p50") for pair in pairs]),
        "first_relay_added_p50_ms": med([diff(pair, "relay_p50") for pair in pairs]),
        "per_delta_overhead_p50_ms": per_delta,
        "per_delta_overhead_p95_ms": med([diff(pair, "latency_p95") for pair in pairs]),
        "per_delta_overhead_p50_rounds_ms": [
            None if (value := diff(pair, "latency_p50")) is None else round(value, 3) for pair in pairs
        ],
        "per_delta_gap_added_p50_ms": med([pair["ws"]["gap_added_p50"] for pair in pairs]),
        "per_delta_gap_added_mean_ms": med([pair["ws"]["gap_added_mean"] for pair in pairs]),
        "unloaded_added_ttft_p50_ms": None if unloaded_added is None else round(unloaded_added, 2),
        "unloaded_per_delta_overhead_p50_ms": None
        if not unloaded
        else round(unloaded["ws"]["latency_p50"] - unloaded["direct"]["latency_p50"], 3),
        "asgi_cpu_us_per_token": cpu_per_token_us,
        "ws_tokens_per_second": med([pair["ws"]["tokens"] / pair["ws"]["wall"] for pair in pairs]),
        "ws_tokens_per_delta": med([pair["ws"]["tokens"] / max(1, pair["ws"]["deltas"]) for pair in pairs]),
        "direct_tokens_per_second": med(
            [pair["direct"]["tokens"] / pair["direct"]["wall"] for pair in pairs]
        ),
        "cpu_share_ws_rounds": cpu_shares,
        "idle_connections_held": idle.get("held", 0),
        "idle": idle,
        "goal_met": goal_met,
        "correct": correct,
        "streams": args.streams,
        "per_slot": args.per_slot,
        "tokens": args.tokens,
        "first_token_delay_ms": args.first_token_delay,
        "token_delay_ms": args.token_delay,
        "rounds": args.rounds,
        "clients": args.clients,
        "compression": args.compression,
        "database": bench.database.engine,
        "server": server,
        "cpus": {"server": sorted(bench.server_cpus), "harness": sorted(bench.harness_cpus)},
        "loadavg": load_average(),
    }


if __name__ == "__main__":
    sys.exit(main())
