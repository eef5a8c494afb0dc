"""The SSH adapter: the only module of the SLM that imports paramiko.

Rules it enforces for every caller:
- A connection needs the node's pinned host key; paramiko's ``RejectPolicy`` refuses any other key
  (``HostKeyMismatch``) and there is no "accept anything" mode. ``fetch_host_key`` only reads the key a
  host presents, for an operator to accept; it never authenticates.
- Commands are argument lists, each argument quoted with ``shlex``; a raw shell string from input is not
  accepted. Scripts that need a shell are fixed strings in code with their inputs passed as ``$1 …``.
- Secrets (passwords, private keys) are passed in memory; nothing is written to disk or to a command line.
- ``SshPool`` keeps a bounded number of connections per host, drops idle and dead ones and backs off
  from hosts that fail to connect.
"""

from __future__ import annotations

import io
import logging
import shlex
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import paramiko

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 60.0
MAX_OUTPUT_BYTES = 1_000_000


# --------------------------------------------------------------------------------------------------
# Values and errors


@dataclass(frozen=True)
class HostKey:
    key_type: str
    base64: str
    fingerprint: str  # "SHA256:…", as ssh-keygen -l prints it

    def __repr__(self) -> str:
        return f"HostKey({self.key_type} {self.fingerprint})"


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to connect. Exactly one of ``private_key`` (OpenSSH PEM bytes) or ``password``."""

    address: str
    port: int
    user: str
    host_key: HostKey
    private_key: bytes | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def pool_key(self) -> tuple[str, int, str, str]:
        return (self.address, self.port, self.user, self.host_key.fingerprint)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class SshError(Exception):
    """Base of the adapter's errors; messages never contain secrets."""


class SshUnreachable(SshError):
    """No TCP connection or no SSH handshake (refused, timed out, DNS failure)."""


class SshAuthenticationFailed(SshError):
    """The host refused our key or password."""


class HostKeyMismatch(SshError):
    """The host presented another key than the pinned one. The connection was refused."""

    def __init__(self, presented: HostKey, pinned: HostKey) -> None:
        super().__init__(f"host key mismatch: pinned {pinned.fingerprint}, presented {presented.fingerprint}")
        self.presented = presented
        self.pinned = pinned


class CommandTimeout(SshError):
    pass


# --------------------------------------------------------------------------------------------------
# Host keys


def host_key_of(key: paramiko.PKey) -> HostKey:
    return HostKey(key_type=key.get_name(), base64=key.get_base64(), fingerprint=key.fingerprint)


def _known_hosts_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def _pkey_from_host_key(host_key: HostKey) -> paramiko.PKey:
    return paramiko.PKey.from_type_string(host_key.key_type, _b64decode(host_key.base64))


def _b64decode(value: str) -> bytes:
    import base64

    return base64.b64decode(value.encode(), validate=True)


def fetch_host_key(address: str, port: int, *, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> HostKey:
    """The host key ``address:port`` presents, without authenticating (for capture and acceptance)."""
    sock = _open_socket(address, port, timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        return host_key_of(transport.get_remote_server_key())
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SshUnreachable(f"{address}:{port}: no SSH handshake ({exc.__class__.__name__})") from None
    finally:
        transport.close()


def _open_socket(address: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((address, port), timeout=timeout)
    except OSError as exc:
        raise SshUnreachable(f"{address}:{port}: cannot connect ({exc.__class__.__name__})") from None


# --------------------------------------------------------------------------------------------------
# Connections


def _load_private_key(private_key: bytes) -> paramiko.PKey:
    text = private_key.decode()
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise SshAuthenticationFailed("the private key could not be loaded")


class SshSession:
    """One authenticated connection. Use ``run`` with an argument list."""

    def __init__(self, target: SshTarget, client: paramiko.SSHClient) -> None:
        self.target = target
        self._client = client
        self.last_used = time.monotonic()

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
        stdin: bytes | None = None,
    ) -> CommandResult:
        if isinstance(argv, str) or not argv:
            raise TypeError("argv must be a non-empty list of arguments, not a shell string")
        command = shlex.join(argv)
        self.last_used = time.monotonic()
        try:
            channel_in, channel_out, channel_err = self._client.exec_command(command, timeout=timeout)
            if stdin is not None:
                channel_in.write(stdin)
                channel_in.channel.shutdown_write()
            stdout = channel_out.read(MAX_OUTPUT_BYTES)
            stderr = channel_err.read(MAX_OUTPUT_BYTES)
            exit_code = channel_out.channel.recv_exit_status()
        except TimeoutError as exc:  # socket.timeout is TimeoutError since Python 3.10
            raise CommandTimeout(f"{argv[0]} did not finish within {timeout} s") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshUnreachable(
                f"connection lost while running {argv[0]} ({exc.__class__.__name__})"
            ) from None
        return CommandResult(
            tuple(argv), exit_code, stdout.decode(errors="replace"), stderr.decode(errors="replace")
        )

    def is_alive(self) -> bool:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            return False
        try:
            transport.send_ignore()
        except (paramiko.SSHException, OSError, EOFError):
            return False
        return True

    def close(self) -> None:
        self._client.close()


def connect(target: SshTarget, *, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> SshSession:
    """Connect and authenticate, accepting only the pinned host key."""
    if (target.private_key is None) == (target.password is None):
        raise ValueError("give exactly one of private_key or password")
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(
        _known_hosts_name(target.address, target.port),
        target.host_key.key_type,
        _pkey_from_host_key(target.host_key),
    )
    options = {
        "hostname": target.address,
        "port": target.port,
        "username": target.user,
        "timeout": timeout,
        "banner_timeout": timeout,
        "auth_timeout": timeout,
        "allow_agent": False,
        "look_for_keys": False,
    }
    if target.private_key is not None:
        options["pkey"] = _load_private_key(target.private_key)
    else:
        options["password"] = target.password
    try:
        client.connect(**options)
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyMismatch(host_key_of(exc.key), target.host_key) from None
    except paramiko.AuthenticationException:
        client.close()
        raise SshAuthenticationFailed(
            f"{target.user}@{target.address}:{target.port} refused our credentials"
        ) from None
    except OSError as exc:  # refused, timed out, no route (paramiko's NoValidConnectionsError too)
        client.close()
        raise SshUnreachable(
            f"{target.address}:{target.port}: cannot connect ({exc.__class__.__name__})"
        ) from None
    except (paramiko.SSHException, EOFError) as exc:
        client.close()
        raise SshUnreachable(
            f"{target.address}:{target.port}: SSH handshake failed ({exc.__class__.__name__})"
        ) from None
    return SshSession(target, client)


# --------------------------------------------------------------------------------------------------
# Pool


class SshPool:
    """Reuses authenticated sessions per (address, port, user, pinned key).

    At most ``per_host`` sessions are open per host; a caller beyond that waits up to ``acquire_timeout``.
    Idle sessions older than ``idle_timeout`` and dead ones are closed instead of reused. After a failed
    connect, the host is left alone for an exponentially growing backoff (capped), so a dead host does
    not eat a worker's time on every task.
    """

    def __init__(
        self,
        *,
        per_host: int = 4,
        idle_timeout: float = 120.0,
        acquire_timeout: float = 30.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.per_host = per_host
        self.idle_timeout = idle_timeout
        self.acquire_timeout = acquire_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._lock = threading.Condition()
        self._idle: dict[tuple, list[SshSession]] = {}
        self._in_use: dict[tuple, int] = {}
        self._failures: dict[tuple, tuple[int, float]] = {}

    @contextmanager
    def session(self, target: SshTarget) -> Iterator[SshSession]:
        session = self._acquire(target)
        healthy = True
        try:
            yield session
        except SshError:
            healthy = False
            raise
        finally:
            self._release(target, session, healthy=healthy)

    def _acquire(self, target: SshTarget) -> SshSession:
        key = target.pool_key
        deadline = time.monotonic() + self.acquire_timeout
        with self._lock:
            while True:
                self._check_backoff(key)
                idle = self._idle.setdefault(key, [])
                while idle:
                    session = idle.pop()
                    if time.monotonic() - session.last_used < self.idle_timeout and session.is_alive():
                        self._in_use[key] = self._in_use.get(key, 0) + 1
                        return session
                    session.close()
                if self._in_use.get(key, 0) < self.per_host:
                    self._in_use[key] = self._in_use.get(key, 0) + 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SshUnreachable(
                        f"{target.address}: no free SSH session within {self.acquire_timeout} s"
                    )
                self._lock.wait(remaining)
        try:
            session = connect(target)
        except SshError as exc:
            with self._lock:
                self._in_use[key] -= 1
                # Only an unreachable host is left alone for a while; a refused key or a changed host
                # key is an answer, and the operator's fix should be tried at once.
                if isinstance(exc, SshUnreachable):
                    count, _ = self._failures.get(key, (0, 0.0))
                    delay = min(self.backoff_max, self.backoff_base * 2**count)
                    self._failures[key] = (count + 1, time.monotonic() + delay)
                self._lock.notify()
            raise
        with self._lock:
            self._failures.pop(key, None)
        return session

    def _check_backoff(self, key: tuple) -> None:
        failure = self._failures.get(key)
        if failure and time.monotonic() < failure[1]:
            raise SshUnreachable(
                f"{key[0]}:{key[1]} failed recently; retry in {failure[1] - time.monotonic():.0f} s"
            )

    def _release(self, target: SshTarget, session: SshSession, *, healthy: bool) -> None:
        key = target.pool_key
        with self._lock:
            self._in_use[key] -= 1
            if healthy and session.is_alive():
                session.last_used = time.monotonic()
                self._idle.setdefault(key, []).append(session)
            else:
                session.close()
            self._lock.notify()

    def close_all(self) -> None:
        with self._lock:
            for sessions in self._idle.values():
                for session in sessions:
                    session.close()
            self._idle.clear()
