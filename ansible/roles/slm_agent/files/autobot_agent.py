#!/usr/bin/env python3
"""AutoBot node agent: reports this VM's health to the SLM every ``interval_seconds``.

Why it is built this way:

* One file, Python 3.9+ standard library only: Ansible copies it onto every VM of the fleet, where it runs
  on the distribution's own ``python3`` with no virtualenv and nothing installed from pip.
* Every heartbeat is written to disk before it is sent, and the buffer is flushed oldest first, stopping at
  the first failure. An SLM outage therefore loses nothing, and the SLM receives samples in order. The SLM
  stores each ``sequence`` once per node. If the agent crashes after a heartbeat was delivered but before its
  file was deleted, sending that heartbeat again is harmless.
* Each node authenticates with its own token. The original agent sent unauthenticated heartbeats that anyone
  could spoof. The token lives in a 0600 file and is read only when it is needed. It never appears in the
  config, the command line, the environment or the logs.

Usage: ``python3 autobot_agent.py --config /etc/autobot/agent.json [--once]``. README.md lists the config
keys.
"""

from __future__ import annotations

import argparse
import enum
import http.client
import json
import logging
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

AGENT_VERSION = "1.0.0"
# Equal to shared_contracts.version.CONTRACT_VERSION. The agent cannot import it on a VM.
CONTRACT_VERSION = "1.0"
DEFAULT_CONFIG_PATH = "/etc/autobot/agent.json"
ENV_PREFIX = "AUTOBOT_AGENT_"

# These are the limits of shared_contracts.schemas.fleet.Heartbeat. A host with more listening ports than
# the contract allows must still send a heartbeat the SLM accepts, not one it rejects every time.
MAX_SERVICES = 500
MAX_PORTS = 2000
MAX_ROLES = 50
MAX_VERSION_LENGTH = 100

FIRST_CPU_SAMPLE_SECONDS = 0.2
PROBE_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 1.0
RETRY_BASE_SECONDS = 1.0
# Rejected heartbeats are kept for the operator to inspect, but they must not fill the disk.
REJECTED_KEEP = 100

# A 400 (or 413/422) means the SLM will never accept this payload. Sending it again would block every
# later one.
REJECTED_STATUSES = frozenset({400, 413, 422})
REFUSAL_HINTS = {
    401: "the agent token is wrong, expired or revoked",
    403: "the agent token is not valid for this node",
    404: "the SLM does not know this node_id",
}
SYSTEMD_STATES = {
    "active": "running",
    "reloading": "running",
    "inactive": "stopped",
    "deactivating": "stopped",
    "failed": "failed",
}

log = logging.getLogger("autobot-agent")


# --- configuration ----------------------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "slm_url": "",
    "node_id": "",
    "token_file": "",
    "interval_seconds": 30.0,
    "buffer_dir": "/var/lib/autobot-agent/buffer",
    "buffer_max": 5000,
    "service_manager": "systemd",
    "services": [],
    "roles": [],
    "ca_file": "",
    "timeout_seconds": 10.0,
}


class ConfigError(Exception):
    """The agent cannot run with this configuration. It is reported in one line and the agent exits with 2."""


class TokenError(ConfigError):
    """The token file is missing, empty or readable by others. The message never contains the token."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    unit: str
    port: int | None
    protocol: str
    pid_file: str


@dataclass(frozen=True)
class RoleSpec:
    role: str
    service: str
    version_command: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    slm_url: str
    node_id: str
    token_file: Path
    interval_seconds: float
    buffer_dir: Path
    buffer_max: int
    service_manager: str
    services: tuple[ServiceSpec, ...]
    roles: tuple[RoleSpec, ...]
    ca_file: str
    timeout_seconds: float

    @property
    def heartbeat_url(self) -> str:
        return f"{self.slm_url}/api/v1/nodes/{self.node_id}/heartbeat"


def load_config(path: Path, environ: Mapping[str, str]) -> Config:
    """Read the JSON file, then let ``AUTOBOT_AGENT_<KEY>`` override any key (containers configure by env).

    Unknown keys are an error, because a misspelt ``interval`` that is silently ignored is worse than a
    refusal to start.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    values = {**DEFAULTS, **raw}
    for key, default in DEFAULTS.items():
        text = environ.get(ENV_PREFIX + key.upper())
        if text is not None:
            values[key] = _parse_env_value(key, text, default)
    return _validated(values)


def _parse_env_value(key: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, list):
            return json.loads(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{key.upper()} is not a valid {type(default).__name__}") from None
    return text


def _positive(values: dict[str, Any], key: str) -> float:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key} must be a positive number")
    return value


def _validated(values: dict[str, Any]) -> Config:
    slm_url = str(values["slm_url"]).rstrip("/")
    if not slm_url.startswith(("http://", "https://")):
        raise ConfigError("slm_url must be an http:// or https:// URL")
    try:
        node_id = str(uuid.UUID(str(values["node_id"])))
    except ValueError:
        raise ConfigError("node_id must be a UUID") from None
    if not values["token_file"]:
        raise ConfigError("token_file is required")
    if values["service_manager"] not in ("systemd", "direct"):
        raise ConfigError('service_manager must be "systemd" or "direct"')
    buffer_max = _positive(values, "buffer_max")
    if not isinstance(buffer_max, int):
        raise ConfigError("buffer_max must be a whole number")
    return Config(
        slm_url=slm_url,
        node_id=node_id,
        token_file=Path(values["token_file"]),
        interval_seconds=float(_positive(values, "interval_seconds")),
        buffer_dir=Path(values["buffer_dir"]),
        buffer_max=buffer_max,
        service_manager=values["service_manager"],
        services=tuple(_service_spec(item) for item in _list(values, "services")),
        roles=tuple(_role_spec(item) for item in _list(values, "roles")),
        ca_file=str(values["ca_file"] or ""),
        timeout_seconds=float(_positive(values, "timeout_seconds")),
    )


def _list(values: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = values[key]
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ConfigError(f"{key} must be a list of objects")
    return items


def _service_spec(item: dict[str, Any]) -> ServiceSpec:
    name = str(item.get("name") or "")
    port = item.get("port")
    if not name:
        raise ConfigError("every service needs a name")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        raise ConfigError(f"service {name}: port must be 1-65535")
    return ServiceSpec(
        name=name,
        unit=str(item.get("unit") or name),
        port=port,
        protocol=str(item.get("protocol") or "tcp"),
        pid_file=str(item.get("pid_file") or f"/run/{name}.pid"),
    )


def _role_spec(item: dict[str, Any]) -> RoleSpec:
    if not item.get("role") or not item.get("service"):
        raise ConfigError("every role needs a role and a service")
    command = item.get("version_command") or []
    # The command is split into an argument list here and never handed to a shell.
    if isinstance(command, str):
        command = shlex.split(command)
    return RoleSpec(role=str(item["role"]), service=str(item["service"]), version_command=tuple(command))


def read_token(path: Path) -> str:
    """Return the agent token.

    It is read before every flush, so an operator who fixes the file needs no restart. The agent refuses a
    file that group or others can access, as ssh refuses a private key readable by others.
    """
    try:
        with path.open(encoding="utf-8") as token_file:
            if os.fstat(token_file.fileno()).st_mode & 0o077:
                raise TokenError(f"token file {path} must be accessible by its owner only (chmod 600)")
            token = token_file.read().strip()
    except OSError as exc:
        raise TokenError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise TokenError(f"token file {path} is empty")
    if any(char.isspace() or not char.isprintable() for char in token):
        raise TokenError(f"token file {path} holds whitespace or control characters inside the token")
    return token


# --- collection -------------------------------------------------------------------------------------------


def _percent(part: float, whole: float) -> float:
    if whole <= 0:
        return 0.0
    return round(min(100.0, max(0.0, 100.0 * part / whole)), 2)


def _cpu_times() -> tuple[int, int]:
    """Return (idle, total) jiffies since boot. Guest time is already counted in user, so 8 fields count."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    return fields[3] + fields[4], sum(fields)


class CpuMeter:
    """CPU busy % between two reads of /proc/stat: the load since the previous tick, not since boot."""

    def __init__(self) -> None:
        self._previous: tuple[int, int] | None = None

    def percent(self) -> float:
        if self._previous is None:
            self._previous = _cpu_times()
            time.sleep(FIRST_CPU_SAMPLE_SECONDS)
        idle, total = _cpu_times()
        previous_idle, previous_total = self._previous
        self._previous = (idle, total)
        elapsed = total - previous_total
        return _percent(elapsed - (idle - previous_idle), elapsed)


def memory_percent() -> float:
    """Used memory as the kernel's own ``MemAvailable`` sees it. Page cache counts as available."""
    info: dict[str, int] = {}
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
    total = info["MemTotal"]
    return _percent(total - info.get("MemAvailable", info["MemFree"]), total)


def disk_percent(path: str = "/") -> float:
    """Use% as ``df`` shows it. Blocks reserved for root count as neither free nor usable."""
    stat = os.statvfs(path)
    used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    return _percent(used, used + stat.f_bavail * stat.f_frsize)


def uptime_seconds() -> int:
    with open("/proc/uptime", encoding="ascii") as uptime:
        return int(float(uptime.read().split()[0]))


def listening_ports() -> list[int]:
    """TCP ports in state LISTEN (0A) on any address, IPv4 and IPv6. /proc needs no ``ss`` or root."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue  # IPv6 disabled in this kernel or network namespace
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)[:MAX_PORTS]


def systemd_state(unit: str) -> str:
    try:
        result = subprocess.run(  # noqa: S603 - an argument list, no shell; the unit comes from the config
            ["systemctl", "is-active", "--", unit],  # noqa: S607 - systemctl is found on PATH, like any admin would
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return SYSTEMD_STATES.get(result.stdout.strip(), "unknown")


def _read_pid(pid_file: str) -> int | None:
    try:
        pid = int(Path(pid_file).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None
    # 0 and negative numbers address process groups in kill(2), so they are never treated as a pid.
    return pid if pid > 0 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # the process exists but belongs to another user
    return True


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def direct_state(spec: ServiceSpec) -> str:
    """Service state without systemd (containers, the isolated test host).

    A pid file decides when there is one. A pid file whose process is gone means the service died without
    cleaning up, so it is reported as failed. Without a pid file, a TCP port that accepts connections decides.
    """
    pid = _read_pid(spec.pid_file)
    if pid is not None:
        return "running" if _pid_alive(pid) else "failed"
    if spec.port is not None and spec.protocol == "tcp":
        return "running" if _accepts_tcp(spec.port) else "stopped"
    return "unknown"


def command_version(command: tuple[str, ...]) -> str:
    """First line of the command's output, or "" if there is no command or it fails."""
    if not command:
        return ""
    try:
        result = subprocess.run(  # noqa: S603 - an argument list from the root-owned config, no shell
            list(command), capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return lines[0][:MAX_VERSION_LENGTH] if result.returncode == 0 and lines else ""


class Collector:
    """Builds one heartbeat payload (``shared_contracts.schemas.fleet.Heartbeat``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.cpu = CpuMeter()

    def service_state(self, spec: ServiceSpec) -> str:
        if self.config.service_manager == "systemd":
            return systemd_state(spec.unit)
        return direct_state(spec)

    def collect(self, sequence: int) -> dict[str, Any]:
        # sent_at is the time of measurement. A buffered heartbeat keeps it, so the time series stays correct.
        sent_at = datetime.now(timezone.utc)  # noqa: UP017 - datetime.UTC needs Python 3.11; the agent runs on 3.9
        states = {spec.name: self.service_state(spec) for spec in self.config.services[:MAX_SERVICES]}
        roles = []
        for role in self.config.roles[:MAX_ROLES]:
            state = states.get(role.service)
            if state is None:
                state = self.service_state(ServiceSpec(role.service, role.service, None, "tcp", ""))
            version = command_version(role.version_command)
            roles.append({"role": role.role, "running": state == "running", "version": version})
        load_1m, load_5m, load_15m = os.getloadavg()
        return {
            "sequence": sequence,
            "sent_at": sent_at.isoformat(),
            "agent_version": AGENT_VERSION,
            "cpu_percent": self.cpu.percent(),
            "memory_percent": memory_percent(),
            "disk_percent": disk_percent("/"),
            "load_1m": round(load_1m, 2),
            "load_5m": round(load_5m, 2),
            "load_15m": round(load_15m, 2),
            "uptime_seconds": uptime_seconds(),
            "services": [
                {"name": spec.name, "state": states[spec.name], "port": spec.port, "protocol": spec.protocol}
                for spec in self.config.services[:MAX_SERVICES]
            ],
            "listening_ports": listening_ports(),
            "roles": roles,
        }


# --- disk buffer ------------------------------------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_private_file(path: Path, data: bytes) -> None:
    """Write to a temp file, fsync it and rename it, so a crash leaves the whole file or none. Mode 0600."""
    temp = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # a temp file left over from a crash keeps its old mode otherwise
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class HeartbeatBuffer:
    """Heartbeats waiting for delivery, one file each.

    Each file is named by its zero-padded sequence, so sorting the names sorts by sequence. ``state.json``
    keeps the last sequence and the drop count across restarts. The directory is 0700 and the files are
    0600, because the metrics describe the host.
    """

    def __init__(self, directory: Path, max_items: int) -> None:
        self.directory = directory
        self.rejected_dir = directory / "rejected"
        self.max_items = max_items
        for path in (directory, self.rejected_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.chmod(0o700)
        self._state_path = directory / "state.json"
        state = self._read_state()
        self.dropped = int(state.get("dropped", 0))
        self.sequence = self._initial_sequence(state)

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self) -> None:
        state = {"sequence": self.sequence, "dropped": self.dropped}
        write_private_file(self._state_path, json.dumps(state).encode())

    def _initial_sequence(self, state: dict[str, Any]) -> int:
        known = [int(path.stem) for path in self.pending() + self.rejected()]
        if "sequence" in state:
            known.append(int(state["sequence"]))
        if known:
            return max(known)
        # There is no history: this is the first start, or the buffer dir was wiped. The SLM takes a sequence
        # at or below the last one it stored for a node as a replay, so starting again at 0 would make it
        # discard this node's heartbeats. Unix seconds are above any sequence an earlier agent could have
        # reached from its own start time at one heartbeat per interval of 1 s or more.
        return int(time.time())

    def next_sequence(self) -> int:
        """Persist the sequence before use: after a crash a number is skipped, never reused."""
        self.sequence += 1
        self._save_state()
        return self.sequence

    @staticmethod
    def _heartbeat_files(directory: Path) -> list[Path]:
        return sorted(path for path in directory.glob("*.json") if path.stem.isdigit())

    def pending(self) -> list[Path]:
        return self._heartbeat_files(self.directory)

    def rejected(self) -> list[Path]:
        return self._heartbeat_files(self.rejected_dir)

    def store(self, sequence: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        write_private_file(self.directory / f"{sequence:020d}.json", data)
        pending = self.pending()
        excess = len(pending) - self.max_items
        if excess > 0:
            for path in pending[:excess]:
                path.unlink(missing_ok=True)
            self.dropped += excess
            self._save_state()
            log.warning(
                "buffer full (buffer_max %d): dropped the %d oldest heartbeat(s), %d dropped in total",
                self.max_items,
                excess,
                self.dropped,
            )

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def reject(self, path: Path) -> None:
        os.replace(path, self.rejected_dir / path.name)
        for old in self.rejected()[:-REJECTED_KEEP]:
            old.unlink(missing_ok=True)


# --- delivery ---------------------------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would send the bearer token wherever it points, and would turn the POST into a GET.

    The SLM API never redirects, so a 3xx answer is reported as a refusal (a wrong ``slm_url``).
    """

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (connection refused, timeout, DNS, TLS)
    body: bytes = b""
    error: str = ""


class SlmClient:
    def __init__(self, config: Config) -> None:
        self.url = config.heartbeat_url
        self.timeout = config.timeout_seconds
        handlers: list[urllib.request.BaseHandler] = [_NoRedirects()]
        if config.slm_url.startswith("https://"):
            # Certificates are always verified. ca_file adds the fleet's private CA.
            context = ssl.create_default_context(cafile=config.ca_file or None)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)

    def post_heartbeat(self, body: bytes, token: str) -> Answer:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be http(s) in _validated
            self.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "X-AutoBot-Contract": CONTRACT_VERSION,
                "User-Agent": f"autobot-agent/{AGENT_VERSION}",
            },
        )
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return Answer(response.status, response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return Answer(exc.code, exc.read())
        except urllib.error.URLError as exc:
            return Answer(None, error=str(exc.reason))
        except (OSError, http.client.HTTPException) as exc:
            return Answer(None, error=str(exc) or type(exc).__name__)


def _describe_error(body: bytes) -> str:
    """Summarise the SLM's error body (``code``, ``message``, ``fields``, ``request_id``) for one log line."""
    try:
        error = json.loads(body)
        summary = f"{error.get('code')}: {error.get('message')} fields={error.get('fields')}"
        summary += f" request_id={error.get('request_id')}"
    except (ValueError, AttributeError):
        summary = body.decode("utf-8", "replace")
    return summary[:500]


class Flush(enum.Enum):
    EMPTY = "empty"  # every buffered heartbeat was delivered or rejected
    RETRY = "retry"  # the SLM is down or failing: try again soon, with backoff
    REFUSED = "refused"  # the SLM refuses this agent (token, node_id, URL): keep all until an operator acts
    STOPPED = "stopped"  # a signal arrived


class Agent:
    """Ties the parts together: collect into the buffer on every tick, then flush the buffer to the SLM."""

    def __init__(self, config: Config, stop: threading.Event) -> None:
        self.config = config
        self.stop = stop
        self.buffer = HeartbeatBuffer(config.buffer_dir, config.buffer_max)
        self.collector = Collector(config)
        self.client = SlmClient(config)
        self.rejected_count = 0

    def tick(self) -> None:
        """Collect a heartbeat and buffer it.

        It is never sent straight from memory. The disk comes first, so a crash during the POST loses nothing.
        """
        try:
            sequence = self.buffer.next_sequence()
            self.buffer.store(sequence, self.collector.collect(sequence))
        except OSError as exc:  # a full or read-only disk: keep running, the SLM sees the node go quiet
            log.error("could not record a heartbeat in %s: %s", self.config.buffer_dir, exc)

    def flush(self) -> Flush:
        """Send the buffered heartbeats oldest first. Stop at the first one not delivered, so order holds."""
        pending = self.buffer.pending()
        if not pending:
            return Flush.EMPTY
        try:
            token = read_token(self.config.token_file)
        except TokenError as exc:
            log.error("cannot send: %s; keeping %d buffered heartbeat(s)", exc, len(pending))
            return Flush.REFUSED
        for index, path in enumerate(pending):
            if self.stop.is_set():
                return Flush.STOPPED
            answer = self.client.post_heartbeat(path.read_bytes(), token)
            outcome = self._handle(path, answer, kept=len(pending) - index)
            if outcome is not None:
                return outcome
        return Flush.EMPTY

    def _handle(self, path: Path, answer: Answer, kept: int) -> Flush | None:
        sequence = int(path.stem)
        status = answer.status
        if status is not None and 200 <= status < 300:
            self.buffer.remove(path)  # a duplicate ack also means the SLM has it
            try:
                ack = json.loads(answer.body)
            except ValueError:
                ack = {}
            duplicate = " (duplicate)" if isinstance(ack, dict) and ack.get("duplicate") else ""
            state = ack.get("state", "?") if isinstance(ack, dict) else "?"
            log.info("heartbeat %d delivered%s, node state %s", sequence, duplicate, state)
            return None
        if status in REJECTED_STATUSES:
            self.buffer.reject(path)
            self.rejected_count += 1
            log.error(
                "heartbeat %d rejected by the SLM (HTTP %d, %s); moved to %s",
                sequence,
                status,
                _describe_error(answer.body),
                self.buffer.rejected_dir,
            )
            return None
        if status is None or status >= 500 or status == 429:
            reason = answer.error if status is None else f"HTTP {status}"
            log.warning("SLM unavailable (%s); %d heartbeat(s) buffered", reason, kept)
            return Flush.RETRY
        hint = REFUSAL_HINTS.get(status, "check slm_url")
        log.error(
            "SLM REFUSED this agent: HTTP %d, %s (node %s); keeping %d buffered heartbeat(s) until fixed",
            status,
            hint,
            self.config.node_id,
            kept,
        )
        return Flush.REFUSED

    def run_once(self) -> int:
        """For ``--once``: exit 0 only if this heartbeat and everything buffered before it were delivered."""
        self.tick()
        outcome = self.flush()
        return 0 if outcome is Flush.EMPTY and self.rejected_count == 0 else 1

    def run_forever(self) -> None:
        """Tick every interval. While the SLM is unavailable, retry with backoff of at most one interval."""
        interval = self.config.interval_seconds
        next_tick = time.monotonic()
        retry_at: float | None = None
        failures = 0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self.tick()
                next_tick += interval
                if next_tick <= time.monotonic():  # fell behind (a long flush): skip, do not burst
                    next_tick = time.monotonic() + interval
                retry_at = now
            if retry_at is not None and time.monotonic() >= retry_at:
                outcome = self.flush()
                if outcome is Flush.RETRY:
                    failures += 1
                    retry_at = time.monotonic() + min(interval, RETRY_BASE_SECONDS * 2 ** (failures - 1))
                else:
                    failures = 0
                    retry_at = None
            wake_at = next_tick if retry_at is None else min(next_tick, retry_at)
            self.stop.wait(max(0.0, wake_at - time.monotonic()))


# --- command line -----------------------------------------------------------------------------------------


def _warn_about_plain_http(config: Config) -> None:
    host = urllib.parse.urlsplit(config.slm_url).hostname
    if config.slm_url.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("slm_url is plain http to %s: the agent token travels unencrypted; use https", host)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autobot_agent.py", description="AutoBot node agent")
    parser.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG_PATH), help="JSON config file")
    parser.add_argument(
        "--once",
        action="store_true",
        help="record one heartbeat, flush the buffer and exit (0: all delivered, 1: some kept or rejected)",
    )
    parser.add_argument("--version", action="version", version=AGENT_VERSION)
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s autobot-agent: %(message)s"
    )

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # Only set the flag here. The loop finishes the request in flight and then returns.
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        config = load_config(args.config, os.environ)
        read_token(config.token_file)  # fail at start, not at the first flush
        agent = Agent(config, stop)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except OSError as exc:
        log.error("cannot use buffer_dir: %s", exc)
        return 2
    _warn_about_plain_http(config)
    log.info(
        "agent %s for node %s: SLM %s, every %g s, buffer %s (%d pending)",
        AGENT_VERSION,
        config.node_id,
        config.slm_url,
        config.interval_seconds,
        config.buffer_dir,
        len(agent.buffer.pending()),
    )
    if args.once:
        return agent.run_once()
    agent.run_forever()
    signal_name = signal.Signals(received[0]).name if received else "request"
    log.info("stopped on %s; %d heartbeat(s) left in the buffer", signal_name, len(agent.buffer.pending()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
