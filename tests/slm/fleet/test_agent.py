"""The node agent (ansible/roles/slm_agent/files/autobot_agent.py), run as a real process.

Most tests talk to a scripted stand-in SLM (``agent_server.py``) that can answer 200/400/401/503 or go away.
``TestAgainstLiveSlm`` runs the agent against the real SLM web process (the ``live_slm`` fixture). Select
those tests with ``-k TestAgainstLiveSlm``.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from shared_contracts.schemas.fleet import Heartbeat, RoleReport
from shared_contracts.version import CONTRACT_VERSION, CONTRACT_VERSION_HEADER
from tests.fixtures.live_slm import REPO_DIR, LiveSlm, base_process_env, free_port
from tests.slm.fleet.agent_server import ScriptedSlm

AGENT_PATH = REPO_DIR / "ansible" / "roles" / "slm_agent" / "files" / "autobot_agent.py"
INTERVAL = 0.2
WAIT_SECONDS = 20


@functools.cache
def agent_version() -> str:
    """What ``--version`` prints: the version the heartbeats must carry."""
    result = subprocess.run(
        [sys.executable, str(AGENT_PATH), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout.strip()


def wait_until(predicate: Callable[[], object], *, timeout: float = WAIT_SECONDS, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class AgentRun:
    """One agent installation: config file, 0600 token file, buffer dir, and its processes' logs."""

    def __init__(self, tmp_path: Path, *, slm_url: str, token: str, **config: object) -> None:
        self.token = token
        self.token_file = tmp_path / "agent.token"
        self.write_token(token)
        self.config_file = tmp_path / "agent.json"
        self.config = {
            "slm_url": slm_url,
            "node_id": str(uuid.uuid4()),
            "token_file": str(self.token_file),
            "interval_seconds": INTERVAL,
            "buffer_dir": str(tmp_path / "buffer"),
            "buffer_max": 1000,
            "service_manager": "direct",
            "services": [],
            "roles": [],
            "timeout_seconds": 5,
            **config,
        }
        self.logs: list[str] = []  # output of --once runs
        self._process: subprocess.Popen | None = None
        self._log_path = tmp_path / "agent.log"

    @property
    def buffer_dir(self) -> Path:
        return Path(self.config["buffer_dir"])

    def write_token(self, token: str) -> None:
        self.token_file.write_text(token + "\n")
        self.token_file.chmod(0o600)

    def write_config(self) -> None:
        self.config_file.write_text(json.dumps(self.config))

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**base_process_env(), **(extra or {})}

    def run_once(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        self.write_config()
        result = subprocess.run(
            [sys.executable, str(AGENT_PATH), "--config", str(self.config_file), "--once"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=self.env(env),
        )
        self.logs.append(result.stdout + result.stderr)
        return result

    def start(self) -> None:
        self.write_config()
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, str(AGENT_PATH), "--config", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
            )

    def stop(self) -> int:
        """SIGTERM, as systemd sends it; the agent must exit by itself, promptly and with status 0."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        returncode = self._process.wait(timeout=15)
        self._process = None
        return returncode

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def log_text(self) -> str:
        """Everything every agent process of this installation wrote."""
        background = self._log_path.read_text() if self._log_path.exists() else ""
        return "".join(self.logs) + background

    def pending(self) -> list[int]:
        return sorted(int(path.stem) for path in self.buffer_dir.glob("*.json") if path.stem.isdigit())

    def rejected(self) -> list[int]:
        return sorted(int(path.stem) for path in (self.buffer_dir / "rejected").glob("*.json"))

    def assert_token_nowhere(self, *tokens: str) -> None:
        """No token in any log line, buffered heartbeat, rejected heartbeat or state file."""
        contents = {}
        for path in self.buffer_dir.rglob("*"):
            try:
                contents[path] = path.read_text()
            except (FileNotFoundError, IsADirectoryError):
                continue  # a directory, or a file the running agent has just renamed or sent
        for token in tokens or (self.token,):
            assert token not in self.log_text()
            for path, text in contents.items():
                assert token not in text, path


@pytest.fixture
def scripted_slm():
    slm = ScriptedSlm()
    slm.start()
    yield slm
    slm.stop()


@pytest.fixture
def agent(tmp_path, scripted_slm):
    run = AgentRun(tmp_path, slm_url=scripted_slm.url, token=f"agent-{secrets.token_urlsafe(24)}")
    yield run
    run.kill()


def consecutive(sequences: list[int]) -> bool:
    return sequences == list(range(sequences[0], sequences[0] + len(sequences)))


def test_the_agent_is_one_standard_library_file_that_python_3_9_can_parse():
    """VMs run it on the distribution's python3, with nothing installed: no third-party import, no syntax
    newer than 3.9 (``match``, ``except*`` …)."""
    tree = ast.parse(AGENT_PATH.read_text(), feature_version=(3, 9))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    top_level = {name.partition(".")[0] for name in imported}
    assert top_level <= sys.stdlib_module_names | {"__future__"}


# --- one heartbeat ----------------------------------------------------------------------------------------


def test_once_sends_a_contract_valid_heartbeat_with_the_bearer_token(agent, scripted_slm, tmp_path):
    live_pid_file = tmp_path / "worker.pid"
    live_pid_file.write_text(str(os.getpid()))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_pid_file = tmp_path / "crashed.pid"
    dead_pid_file.write_text(str(dead.pid))
    agent.config["services"] = [
        {"name": "web", "port": scripted_slm.port},
        {"name": "worker", "pid_file": str(live_pid_file)},
        {"name": "crashed", "pid_file": str(dead_pid_file)},
        {"name": "closed", "port": free_port()},
        {"name": "no-probe", "port": 5353, "protocol": "udp", "pid_file": str(tmp_path / "none.pid")},
    ]
    agent.config["roles"] = [
        {"role": "backend", "service": "web", "version_command": [sys.executable, "-c", "print('9.8.7')"]},
        {"role": "redis", "service": "closed", "version_command": "false"},
    ]

    result = agent.run_once()

    assert result.returncode == 0, result.stderr
    [request] = scripted_slm.requests
    assert request.path == f"/api/v1/nodes/{agent.config['node_id']}/heartbeat"
    assert request.headers["authorization"] == f"Bearer {agent.token}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers[CONTRACT_VERSION_HEADER.lower()] == CONTRACT_VERSION
    heartbeat = Heartbeat.model_validate_json(request.body)
    assert heartbeat.agent_version == agent_version() != ""
    assert heartbeat.sent_at.utcoffset().total_seconds() == 0
    assert heartbeat.uptime_seconds > 0
    assert heartbeat.memory_percent > 0
    assert {service.name: service.state for service in heartbeat.services} == {
        "web": "running",
        "worker": "running",
        "crashed": "failed",
        "closed": "stopped",
        "no-probe": "unknown",
    }
    assert scripted_slm.port in heartbeat.listening_ports
    assert heartbeat.roles == [
        RoleReport(role="backend", running=True, version="9.8.7"),
        RoleReport(role="redis", running=False, version=""),
    ]
    assert agent.pending() == []
    assert "delivered" in result.stderr
    agent.assert_token_nowhere()


def test_systemd_mode_asks_systemctl_is_active(agent, scripted_slm, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2" = "is-active --" ] || exit 64\n'
        'case "$3" in\n'
        "  web.service) echo active ;;\n"
        "  db.service) echo failed; exit 3 ;;\n"
        "  *) echo inactive; exit 3 ;;\n"
        "esac\n"
    )
    fake.chmod(0o755)
    agent.config["service_manager"] = "systemd"
    agent.config["services"] = [
        {"name": "web", "unit": "web.service", "port": 8001},
        {"name": "db", "unit": "db.service"},
        {"name": "cache", "unit": "cache.service"},
    ]
    agent.config["roles"] = [{"role": "frontend", "service": "web"}]

    result = agent.run_once(env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})

    assert result.returncode == 0, result.stderr
    heartbeat = Heartbeat.model_validate_json(scripted_slm.requests[0].body)
    states = {service.name: (service.state, service.port) for service in heartbeat.services}
    assert states == {"web": ("running", 8001), "db": ("failed", None), "cache": ("stopped", None)}
    assert heartbeat.roles == [RoleReport(role="frontend", running=True, version="")]


def test_env_overrides_the_config_file(agent, scripted_slm):
    real_url = agent.config["slm_url"]
    agent.config["slm_url"] = f"http://127.0.0.1:{free_port()}"
    agent.config["services"] = [{"name": "web", "port": 1}]

    result = agent.run_once(env={"AUTOBOT_AGENT_SLM_URL": real_url, "AUTOBOT_AGENT_SERVICES": "[]"})

    assert result.returncode == 0, result.stderr
    assert Heartbeat.model_validate_json(scripted_slm.requests[0].body).services == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"interval": 5}, "unknown config key(s): interval"),
        ({"node_id": "node-1"}, "node_id must be a UUID"),
        ({"slm_url": "ftp://slm"}, "slm_url must be an http"),
        ({"buffer_max": 0}, "buffer_max must be a positive number"),
        ({"service_manager": "upstart"}, "service_manager must be"),
    ],
)
def test_a_bad_config_stops_the_agent_with_a_clear_message(agent, scripted_slm, change, message):
    agent.config.update(change)

    result = agent.run_once()

    assert result.returncode == 2
    assert message in result.stderr
    assert scripted_slm.requests == []


def test_a_token_file_readable_by_others_is_refused(agent, scripted_slm):
    agent.token_file.chmod(0o644)

    result = agent.run_once()

    assert result.returncode == 2
    assert "chmod 600" in result.stderr
    assert scripted_slm.requests == []
    agent.assert_token_nowhere()


# --- buffering and delivery -------------------------------------------------------------------------------


def test_while_the_slm_is_down_heartbeats_are_buffered_then_arrive_in_order_exactly_once(agent, scripted_slm):
    scripted_slm.stop()
    agent.start()
    wait_until(lambda: len(agent.pending()) >= 5, what="5 heartbeats buffered on disk")
    buffered = agent.pending()
    assert scripted_slm.requests == []
    assert stat.S_IMODE(agent.buffer_dir.stat().st_mode) == 0o700
    for sequence in buffered:
        path = agent.buffer_dir / f"{sequence:020d}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert Heartbeat.model_validate_json(path.read_bytes()).sequence == sequence
    agent.assert_token_nowhere()

    scripted_slm.start()
    wait_until(lambda: set(buffered) <= set(scripted_slm.delivered), what="the buffer to be flushed")
    wait_until(lambda: len(scripted_slm.delivered) > len(buffered) + 1, what="new heartbeats after the flush")
    assert agent.stop() == 0

    delivered = scripted_slm.delivered
    assert delivered[: len(buffered)] == buffered
    assert consecutive(delivered + agent.pending())  # nothing lost; at most the last one still buffered
    acks = [request for request in scripted_slm.requests if request.status == 200]
    assert len(acks) == len(set(delivered))
    assert "SLM unavailable" in agent.log_text()
    assert "stopped on SIGTERM" in agent.log_text()
    agent.assert_token_nowhere()


def test_a_503_keeps_the_heartbeat_for_the_next_flush(agent, scripted_slm):
    scripted_slm.status = 503
    assert agent.run_once().returncode == 1
    [first] = agent.pending()

    scripted_slm.status = 200
    assert agent.run_once().returncode == 0

    assert [(request.sequence, request.status) for request in scripted_slm.requests] == [
        (first, 503),
        (first, 200),
        (first + 1, 200),
    ]
    assert agent.pending() == []


def test_a_bad_request_moves_the_heartbeat_to_rejected_and_later_ones_still_flow(agent, scripted_slm):
    scripted_slm.stop()
    for _ in range(3):
        assert agent.run_once().returncode == 1
    first, second, third = agent.pending()
    scripted_slm.start()
    scripted_slm.answers[second] = 400

    result = agent.run_once()

    assert result.returncode == 1  # something was rejected
    assert scripted_slm.delivered == [first, third, third + 1]
    assert agent.pending() == []
    assert agent.rejected() == [second]
    rejected_file = agent.buffer_dir / "rejected" / f"{second:020d}.json"
    assert stat.S_IMODE(rejected_file.stat().st_mode) == 0o600
    assert Heartbeat.model_validate_json(rejected_file.read_bytes()).sequence == second
    assert "validation_error" in result.stderr

    assert agent.run_once().returncode == 0  # a rejected heartbeat is never sent again
    assert scripted_slm.delivered == [first, third, third + 1, third + 2]


def test_a_401_keeps_the_buffer_until_the_operator_fixes_the_token(agent, scripted_slm):
    right_token = agent.token
    wrong_token = f"wrong-{secrets.token_urlsafe(24)}"
    scripted_slm.expected_token = right_token
    agent.write_token(wrong_token)

    for _ in range(2):
        result = agent.run_once()
        assert result.returncode == 1
        assert "SLM REFUSED this agent: HTTP 401" in result.stderr
    first, second = agent.pending()
    assert [(request.sequence, request.status) for request in scripted_slm.requests] == [
        (first, 401),
        (first, 401),  # the flush stops at the first refusal and keeps the order
    ]

    agent.write_token(right_token)
    assert agent.run_once().returncode == 0

    assert scripted_slm.delivered == [first, second, second + 1]
    assert agent.pending() == []
    agent.assert_token_nowhere(right_token, wrong_token)


def test_the_sequence_survives_restarts(agent, scripted_slm):
    assert agent.run_once().returncode == 0
    assert agent.run_once().returncode == 0
    agent.start()
    wait_until(lambda: len(scripted_slm.delivered) >= 4, what="two heartbeats from the long-running agent")
    assert agent.stop() == 0
    assert agent.run_once().returncode == 0

    delivered = scripted_slm.delivered
    assert len(delivered) >= 5
    assert consecutive(delivered)


def test_buffer_max_drops_the_oldest_heartbeats(agent, scripted_slm):
    agent.config["buffer_max"] = 3
    scripted_slm.stop()
    assert agent.run_once().returncode == 1
    [first] = agent.pending()
    results = [agent.run_once() for _ in range(4)]

    sequences = agent.pending()
    assert sequences == [first + 2, first + 3, first + 4]
    assert "dropped the 1 oldest heartbeat(s), 2 dropped in total" in results[-1].stderr

    scripted_slm.start()
    assert agent.run_once().returncode == 0  # its new heartbeat pushes out one more of the oldest

    assert scripted_slm.delivered == [first + 3, first + 4, first + 5]


# --- against the real SLM ---------------------------------------------------------------------------------


def manage_slm(live_slm: LiveSlm, *args: str) -> str:
    """Run a management command against the live SLM's database; return its last line of output."""
    result = subprocess.run(
        [sys.executable, "manage_slm.py", *args],
        cwd=REPO_DIR,
        env=live_slm.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def slm_api(
    live_slm: LiveSlm, method: str, path: str, token: str, body: dict | None = None
) -> tuple[int, dict]:
    request = urllib.request.Request(  # noqa: S310 - the live SLM's own loopback URL
        f"{live_slm.url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            CONTRACT_VERSION_HEADER: CONTRACT_VERSION,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - as above
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class TestAgainstLiveSlm:
    """The Done-when of issue 3: the agent, as a process, against the SLM web process (gunicorn)."""

    @pytest.fixture
    def node(self, live_slm):
        """A node registered through the API, with an agent token issued for it."""
        suffix = secrets.token_hex(4)
        api_token = manage_slm(
            live_slm,
            "create_api_client",
            "--name",
            f"agent-test-{suffix}",
            "--scope",
            "nodes:write",
            "--scope",
            "nodes:read",
        )
        name = f"agent-node-{suffix}"
        status, node = slm_api(
            live_slm,
            "POST",
            "/api/v1/nodes",
            api_token,
            {"name": name, "address": "127.0.0.1", "ssh_port": 22, "ssh_user": "root"},
        )
        assert status == 201, node
        agent_token = manage_slm(live_slm, "issue_agent_token", "--node", name)
        return {"id": node["id"], "name": name, "api_token": api_token, "agent_token": agent_token}

    def samples(self, live_slm, node) -> list[int]:
        status, body = slm_api(
            live_slm, "GET", f"/api/v1/nodes/{node['id']}/metrics?window=raw", node["api_token"]
        )
        assert status == 200, body
        return [sample["sequence"] for sample in body["samples"]]

    def node_detail(self, live_slm, node) -> dict:
        status, body = slm_api(live_slm, "GET", f"/api/v1/nodes/{node['id']}", node["api_token"])
        assert status == 200, body
        return body

    def test_heartbeats_are_delivered_buffered_while_the_slm_is_stopped_and_flushed_in_order(
        self, live_slm, node, tmp_path
    ):
        agent = AgentRun(
            tmp_path,
            slm_url=live_slm.url,
            token=node["agent_token"],
            node_id=node["id"],
            interval_seconds=0.3,
            services=[{"name": "slm-web", "port": live_slm.port}],
            roles=[{"role": "slm-agent", "service": "slm-web"}],
        )
        try:
            agent.start()
            wait_until(lambda: len(self.samples(live_slm, node)) >= 2, timeout=60, what="heartbeats stored")
            detail = self.node_detail(live_slm, node)
            assert detail["last_heartbeat_at"] is not None
            assert detail["agent_version"] == agent_version()

            live_slm.stop()
            wait_until(lambda: len(agent.pending()) >= 3, timeout=30, what="heartbeats buffered on disk")
            buffered = agent.pending()
            live_slm.start()
            wait_until(
                lambda: set(buffered) <= set(self.samples(live_slm, node)),
                timeout=60,
                what="the buffer flushed",
            )
            assert agent.stop() == 0
        finally:
            agent.kill()

        stored = self.samples(live_slm, node)
        assert consecutive(stored)  # in order, none missing, none twice
        assert consecutive(stored + agent.pending())  # and at most the last tick still waits on disk
        assert "SLM unavailable" in agent.log_text()
        agent.assert_token_nowhere()
        assert node["agent_token"] not in live_slm.log_path.read_text()

    def test_an_agent_with_a_wrong_token_is_refused_and_nothing_is_stored(self, live_slm, node, tmp_path):
        wrong_token = f"wrong-{secrets.token_urlsafe(32)}"
        agent = AgentRun(tmp_path, slm_url=live_slm.url, token=wrong_token, node_id=node["id"])

        result = agent.run_once()

        assert result.returncode == 1
        assert "SLM REFUSED this agent: HTTP 401" in result.stderr
        [kept] = agent.pending()  # kept for when the operator fixes the token
        assert self.samples(live_slm, node) == []
        assert self.node_detail(live_slm, node)["last_heartbeat_at"] is None
        agent.assert_token_nowhere()

        agent.write_token(node["agent_token"])
        assert agent.run_once().returncode == 0
        assert self.samples(live_slm, node) == [kept, kept + 1]
