"""The SSH adapter's pool: bounded per host, idle and dead sessions replaced, unreachable hosts backed off."""

import threading
import time

import pytest

from slm_project.fleet.runners import ssh
from tests.fixtures.live_slm import free_port


@pytest.fixture
def target(ssh_host):
    return ssh.SshTarget(
        address=ssh_host.address,
        port=ssh_host.port,
        user=ssh_host.user,
        host_key=ssh.fetch_host_key(ssh_host.address, ssh_host.port),
        private_key=ssh_host.client_key_path.read_bytes(),
    )


def test_fetch_host_key_reads_the_presented_key(ssh_host):
    key = ssh.fetch_host_key(ssh_host.address, ssh_host.port)
    assert key.fingerprint == ssh_host.host_key_fingerprint
    assert f"{key.key_type} {key.base64}" == ssh_host.host_public_key


def test_a_session_is_reused_while_fresh(target):
    pool = ssh.SshPool()
    with pool.session(target) as first:
        pass
    with pool.session(target) as second:
        assert second is first
        assert second.run(["echo", "ok"]).stdout == "ok\n"
    pool.close_all()


def test_an_idle_session_is_replaced(target):
    pool = ssh.SshPool(idle_timeout=0.2)
    with pool.session(target) as first:
        pass
    time.sleep(0.3)
    with pool.session(target) as second:
        assert second is not first
    pool.close_all()


def test_a_dead_session_is_replaced(target):
    pool = ssh.SshPool()
    with pool.session(target) as first:
        pass
    first.close()
    with pool.session(target) as second:
        assert second is not first
        assert second.run(["true"]).ok
    pool.close_all()


def test_the_per_host_limit_makes_callers_wait(target):
    pool = ssh.SshPool(per_host=1, acquire_timeout=0.3)
    with pool.session(target), pytest.raises(ssh.SshUnreachable, match="no free SSH session"):
        pool._acquire(target)
    released = threading.Event()

    def hold():
        with pool.session(target):
            released.wait(2)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.1)
    threading.Timer(0.1, released.set).start()
    pool.acquire_timeout = 5
    with pool.session(target) as session:  # waits for the holder, then gets its session
        assert session.run(["true"]).ok
    holder.join()
    pool.close_all()


def test_an_unreachable_host_is_backed_off(ssh_host):
    port = free_port()
    target = ssh.SshTarget(
        address="127.0.0.1",
        port=port,
        user="root",
        host_key=ssh.fetch_host_key(ssh_host.address, ssh_host.port),
        private_key=ssh_host.client_key_path.read_bytes(),
    )
    pool = ssh.SshPool(backoff_base=30)
    with pytest.raises(ssh.SshUnreachable, match="cannot connect"):
        pool._acquire(target)
    started = time.monotonic()
    with pytest.raises(ssh.SshUnreachable, match="failed recently"), pool.session(target):
        pass
    assert time.monotonic() - started < 0.5  # refused from the backoff, without a new connect


def test_a_command_timeout_is_reported(target):
    session = ssh.connect(target)
    try:
        with pytest.raises(ssh.CommandTimeout):
            session.run(["sleep", "5"], timeout=0.5)
    finally:
        session.close()


def test_exactly_one_credential_is_required(target):
    from dataclasses import replace

    with pytest.raises(ValueError, match="exactly one"):
        ssh.connect(replace(target, password="x"))
