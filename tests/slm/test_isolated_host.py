"""The isolated deployment test host (tests/fixtures/isolated_host.py): reachable only with its pinned
key, separate from this machine, and gone without a trace when stopped."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures import isolated_host as isolated

TIMEOUT = 30


def ssh(host: isolated.IsolatedHost, key: Path, known_hosts: Path, *argv: str):
    return subprocess.run(
        [
            "ssh",
            "-F",
            "none",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(key),
            "-p",
            str(host.port),
            f"{host.user}@{host.address}",
            "--",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture
def client_key(tmp_path, isolated_host):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    isolated_host.authorize(key.with_suffix(".pub").read_text())
    return key


def test_the_host_answers_with_its_pinned_key_only(isolated_host, client_key, tmp_path):
    pinned = tmp_path / "known_hosts"
    pinned.write_text(f"{isolated_host.address} {isolated_host.host_public_key}\n")
    result = ssh(isolated_host, client_key, pinned, "sudo", "-n", "cat", "/etc/hostname", ";", "hostname")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "autobot-isolated"

    other = tmp_path / "other_known_hosts"
    stranger = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmW3ZtJ3gBu7d4Pwf4zV3kA7Q0a6bHcFqj5Oh1rGx1T"
    other.write_text(f"{isolated_host.address} {stranger}\n")
    refused = ssh(isolated_host, client_key, other, "true")
    assert refused.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in refused.stderr


def test_the_host_is_apart_from_this_machine(isolated_host):
    # Its own network (only lo and its end of the veth pair) and its own process table.
    links = isolated_host.run(["ip", "-o", "link", "show"]).stdout
    assert len(links.splitlines()) == 2, links
    processes = isolated_host.processes()
    assert any("sshd" in line for line in processes)
    assert not any("pytest" in line for line in processes)
    # Files it writes land in the session's overlay, not in this machine's tree nor in the cached root.
    isolated_host.run(["sh", "-c", "echo marker > /etc/autobot-isolation-check"])
    assert (isolated_host.upper_dir / "etc" / "autobot-isolation-check").read_text() == "marker\n"
    assert not Path("/etc/autobot-isolation-check").exists()
    assert not (isolated.cached_root() / "etc" / "autobot-isolation-check").exists()


def test_the_roles_packages_are_baked_in(isolated_host):
    installed = isolated_host.run(["dpkg-query", "-W", "-f", "${Package}\\n"]).stdout.split()
    assert set(isolated.ROOT_PACKAGES) <= set(installed)


def test_stopping_a_host_leaves_nothing_behind(isolated_host, tmp_path):
    """A second host, stopped after a service was started in it: no process, namespace, link or
    directory survives."""
    session = isolated._Session(tmp_path / "second")
    session.directory.mkdir()
    host = session.start(isolated.cached_root())
    try:
        host.run(["start-stop-daemon", "--start", "--background", "--exec", "/bin/sleep", "--", "4242"])
        deadline = time.monotonic() + 10  # --background returns before the daemon has exec'd
        while "/bin/sleep 4242" not in host.processes():
            assert time.monotonic() < deadline, host.processes()
            time.sleep(0.05)
    finally:
        session.stop()
    assert session.process.poll() is not None
    ps = subprocess.run(["ps", "-e", "-ww", "-o", "args="], capture_output=True, text=True, check=True).stdout
    assert "/bin/sleep 4242" not in ps
    assert host.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert session.host_link not in links
    assert not session.directory.exists()


def test_the_cache_key_follows_the_package_list(monkeypatch):
    key = isolated.root_cache_key()
    monkeypatch.setattr(isolated, "ROOT_PACKAGES", (*isolated.ROOT_PACKAGES, "nginx"))
    assert isolated.root_cache_key() != key


def test_removing_a_build_directory_unmounts_what_is_mounted_below_it_first(tmp_path):
    reason = isolated.missing_capability()
    if reason:
        isolated.unavailable(reason)
    build = tmp_path / "root.building-1"
    (build / "root" / "proc").mkdir(parents=True)
    (build / "root" / "mnt").mkdir()
    outside = tmp_path / "this-machine"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    subprocess.run(["mount", "-t", "proc", "proc", str(build / "root" / "proc")], check=True)
    subprocess.run(["mount", "--bind", str(outside), str(build / "root" / "mnt")], check=True)
    isolated.remove_tree(build)
    assert not build.exists()
    assert (outside / "precious").read_text() == "keep"  # not deleted through the bind mount
    assert str(build) not in Path("/proc/self/mounts").read_text()
