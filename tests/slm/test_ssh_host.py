"""The SSH test host (tests/fixtures/ssh_host.py): reachable with its pinned key and with nothing else."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.fixtures import ssh_host as ssh_host_module
from tests.fixtures.ssh_host import SshHost, SshHostError, SshHostManager

TIMEOUT = 30


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False, **kwargs)


def port_is_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_fixture_describes_a_loopback_host_with_ed25519_keys(ssh_host: SshHost) -> None:
    assert ssh_host.address == "127.0.0.1"
    assert ssh_host.user == "root" or os.getuid() != 0
    assert ssh_host.host_public_key.startswith("ssh-ed25519 AAAA")
    assert len(ssh_host.host_public_key.split()) == 2
    assert ssh_host.client_public_key.startswith("ssh-ed25519 AAAA")
    assert ssh_host.host_key_fingerprint.startswith("SHA256:")
    assert stat.S_IMODE(ssh_host.client_key_path.stat().st_mode) == 0o600
    assert ssh_host.known_hosts_path.read_text() == (
        f"[127.0.0.1]:{ssh_host.port} {ssh_host.host_public_key}\n"
    )
    assert f"Server listening on 127.0.0.1 port {ssh_host.port}" in ssh_host.log_path.read_text()


def test_runs_a_command_with_the_pinned_host_key(ssh_host: SshHost) -> None:
    result = run(ssh_host.ssh_command("echo", "hello world"))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello world\n"


def test_arguments_reach_the_remote_side_unchanged(ssh_host: SshHost) -> None:
    argv = ["a b", "semi;colon", "$HOME", "'quoted'", "*"]

    result = run(ssh_host.ssh_command("printf", "%s\\n", *argv))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == argv


def test_fingerprint_matches_what_the_server_presents(ssh_host: SshHost) -> None:
    scan = run(["ssh-keyscan", "-p", str(ssh_host.port), "127.0.0.1"])
    assert scan.returncode == 0, scan.stderr
    scanned_lines = [line for line in scan.stdout.splitlines() if line and not line.startswith("#")]
    assert scanned_lines == [f"[127.0.0.1]:{ssh_host.port} {ssh_host.host_public_key}"]

    fingerprint = run(["ssh-keygen", "-lf", "-"], input=scan.stdout)

    assert fingerprint.returncode == 0, fingerprint.stderr
    assert [line.split()[1] for line in fingerprint.stdout.splitlines()] == [ssh_host.host_key_fingerprint]


def test_unknown_host_key_is_refused(ssh_host: SshHost, tmp_path: Path) -> None:
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")

    result = run(ssh_host.ssh_command("true", known_hosts_path=empty_known_hosts))

    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    assert empty_known_hosts.read_text() == ""  # StrictHostKeyChecking=yes learns nothing


def test_password_authentication_is_refused(ssh_host: SshHost, tmp_path: Path) -> None:
    """The server offers public keys only: ssh never gets to ask for a password."""
    asked = tmp_path / "askpass-was-called"
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {asked}\necho not-the-password\n")
    askpass.chmod(0o700)
    command = [
        "ssh",
        "-v",
        "-F",
        "none",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={ssh_host.known_hosts_path}",
        "-o",
        "BatchMode=no",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-p",
        str(ssh_host.port),
        f"{ssh_host.user}@{ssh_host.address}",
        "--",
        "true",
    ]
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}

    result = run(command, env=env)

    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr
    assert "Authentications that can continue: publickey\n" in result.stderr
    assert not asked.exists()


def test_second_host_is_independent(ssh_host: SshHost, ssh_host_factory: SshHostManager) -> None:
    other = ssh_host_factory.start()

    assert other.port != ssh_host.port
    assert other.host_key_fingerprint != ssh_host.host_key_fingerprint
    assert other.client_public_key != ssh_host.client_public_key
    assert run(other.ssh_command("true")).returncode == 0
    # Each host's known_hosts pins its own key only.
    crossed = run(other.ssh_command("true", known_hosts_path=ssh_host.known_hosts_path))
    assert crossed.returncode == 255
    assert "Host key verification failed" in crossed.stderr


def test_changed_host_key_on_the_same_port_is_refused(
    ssh_host_factory: SshHostManager, tmp_path: Path
) -> None:
    original = ssh_host_factory.start()
    pinned = tmp_path / "known_hosts"
    shutil.copyfile(original.known_hosts_path, pinned)
    saved_host_key = tmp_path / "host_key"
    shutil.copyfile(original.host_key_path, saved_host_key)
    ssh_host_factory.stop(original)

    changed = ssh_host_factory.start(port=original.port)

    assert changed.port == original.port
    assert changed.host_key_fingerprint != original.host_key_fingerprint
    assert run(changed.ssh_command("true")).returncode == 0
    refused = run(changed.ssh_command("true", known_hosts_path=pinned))
    assert refused.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr
    assert "Host key verification failed" in refused.stderr

    # Restarted with the original key, the pinned known_hosts is accepted again.
    ssh_host_factory.stop(changed)
    restored = ssh_host_factory.start(port=original.port, host_key=saved_host_key)
    assert restored.host_key_fingerprint == original.host_key_fingerprint
    result = run(restored.ssh_command("echo", "back", known_hosts_path=pinned))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "back\n"


def test_stop_closes_the_port_and_removes_the_keys(ssh_host_factory: SshHostManager) -> None:
    host = ssh_host_factory.start()
    key_files = [
        host.client_key_path,
        host.host_key_path,
        host.known_hosts_path,
        host.directory / "authorized_keys",
    ]
    assert all(path.exists() for path in key_files)
    assert port_is_open(host.port)

    ssh_host_factory.stop(host)

    assert not port_is_open(host.port)
    assert not any(path.exists() for path in key_files)
    assert not host.directory.exists()
    assert host not in ssh_host_factory.hosts
    ssh_host_factory.stop(host)  # idempotent


def test_missing_sshd_fails_with_an_install_hint(
    ssh_host_factory: SshHostManager, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ssh_host_module, "SSHD", tmp_path / "no-sshd")

    with pytest.raises(pytest.fail.Exception, match="openssh-server"):
        ssh_host_factory.start()


def test_start_retries_on_a_new_port_when_the_chosen_one_was_taken(
    ssh_host_factory: SshHostManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, ssh_host_module._free_port()])
        monkeypatch.setattr(ssh_host_module, "_free_port", lambda: next(ports))

        host = ssh_host_factory.start()

        assert host.port != taken
        assert run(host.ssh_command("true")).returncode == 0


def test_a_fixed_port_that_is_taken_fails_with_sshds_log(ssh_host_factory: SshHostManager) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()

        with pytest.raises(SshHostError, match="Address already in use"):
            ssh_host_factory.start(port=squatter.getsockname()[1])

    assert ssh_host_factory.hosts == []
