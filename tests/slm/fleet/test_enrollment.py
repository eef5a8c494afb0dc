"""Enrollment end to end against a real sshd (the SSH test host): host keys captured, accepted and
pinned; facts gathered; the SLM's key installed with a one-time password; agent token issued; and every
failure ending in ``error`` with the reason and nothing half-written."""

import secrets

import pytest

from slm_project.access.tokens import token_matches
from slm_project.fleet import enrollment, services
from slm_project.fleet.choices import NodeState
from slm_project.fleet.models import Node, NodeEvent
from slm_project.fleet.runners import ssh
from slm_project.security.models import Credential
from slm_project.security.services import credential_reveal
from tests.fixtures.live_slm import free_port
from tests.slm.fleet.factories import make_node

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    enrollment._POOL.close_all()


@pytest.fixture
def identity():
    return enrollment.slm_identity()


@pytest.fixture
def host(ssh_host_factory, identity):
    """A host where the SLM's key is already authorized (as after a cloud-init provisioning)."""
    return ssh_host_factory.start(authorized_keys=[identity.public_key])


def node_for(host, **overrides) -> Node:
    values = {"address": host.address, "ssh_port": host.port, "ssh_user": host.user}
    return make_node(**(values | overrides))


def capture_and_accept(node: Node) -> Node:
    result = enrollment.connection_test_run(node_id=str(node.pk), actor="user:ops")
    assert result["host_key"] == "captured, awaiting acceptance"
    node.refresh_from_db()
    return services.node_host_key_accept(
        node=node, fingerprint=node.pending_host_key_fingerprint, actor="user:ops"
    )


def enroll(node: Node, **request) -> Node:
    enrollment.node_enroll_request(node=node, actor="user:ops", **request)
    return enrollment.enrollment_run(node_id=str(node.pk))


def test_the_connection_test_captures_the_key_the_host_presents(host):
    node = node_for(host)
    enrollment.connection_test_run(node_id=str(node.pk), actor="user:ops")
    node.refresh_from_db()
    assert node.pending_host_key_fingerprint == host.host_key_fingerprint
    assert not node.host_key  # nothing is pinned without an operator
    assert node.state == NodeState.PENDING
    event = NodeEvent.objects.get(node=node, kind="host_key.captured")
    assert event.needs_attention


def test_enrollment_pins_the_key_gathers_facts_and_issues_a_token(host):
    node = capture_and_accept(node_for(host))
    node = enroll(node)
    assert node.state == NodeState.ONLINE, node.state_reason
    assert node.host_key_fingerprint == host.host_key_fingerprint
    assert node.kernel
    assert node.os
    assert node.cpus
    assert node.cpus >= 1
    assert node.memory_mb
    assert node.memory_mb > 0
    assert node.disk_gb is not None
    token = credential_reveal(credential=node.agent_token_credential).decode()
    assert token.startswith("nat_")
    assert token_matches(token, node.agent_token_hash)
    assert NodeEvent.objects.filter(node=node, kind="enrollment.succeeded").exists()
    path = list(node.transitions.order_by("created_at", "id").values_list("to_state", flat=True))
    assert path == ["enrolling", "online"]


def test_a_fingerprint_supplied_up_front_is_pinned_when_the_host_presents_it(host):
    node = enroll(node_for(host), host_key_fingerprint=host.host_key_fingerprint)
    assert node.state == NodeState.ONLINE, node.state_reason
    assert node.host_key_fingerprint == host.host_key_fingerprint


def test_a_supplied_fingerprint_that_does_not_match_fails_and_pins_nothing(host):
    node = enroll(node_for(host), host_key_fingerprint="SHA256:" + "A" * 43)
    assert node.state == NodeState.ERROR
    assert "not the supplied" in node.state_reason
    assert not node.host_key
    assert NodeEvent.objects.filter(node=node, kind="host_key.changed", severity="critical").exists()


def test_a_changed_host_key_is_refused_and_recorded(ssh_host_factory, identity):
    first = ssh_host_factory.start(authorized_keys=[identity.public_key])
    node = enroll(capture_and_accept(node_for(first)))
    assert node.state == NodeState.ONLINE
    enrollment._POOL.close_all()
    ssh_host_factory.stop(first)
    ssh_host_factory.start(port=first.port, authorized_keys=[identity.public_key])  # same address, new key

    result = enrollment.connection_test_run(node_id=str(node.pk), actor="user:ops")
    assert result["error"].startswith("host key changed")
    node.refresh_from_db()
    assert node.host_key_fingerprint == first.host_key_fingerprint  # still the pinned one
    event = NodeEvent.objects.get(node=node, kind="host_key.changed")
    assert (event.severity, event.needs_attention) == ("critical", True)
    assert first.host_key_fingerprint in event.message
    from slm_project.fleet.selectors import fleet_summary

    assert node.pk in fleet_summary()["needing_attention"]


def test_the_adapter_refuses_a_key_other_than_the_pinned_one(host, identity):
    wrong = ssh.HostKey(
        "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIBmW3ZtJ3gBu7d4Pwf4zV3kA7Q0a6bHcFqj5Oh1rGx1T", "SHA256:x"
    )
    target = ssh.SshTarget(
        address=host.address,
        port=host.port,
        user=host.user,
        host_key=wrong,
        private_key=credential_reveal(credential=identity.credential),
    )
    with pytest.raises(ssh.HostKeyMismatch) as excinfo:
        ssh.connect(target)
    assert excinfo.value.presented.fingerprint == host.host_key_fingerprint


def test_commands_are_argument_lists_never_shell_strings(host, identity):
    target = ssh.SshTarget(
        address=host.address,
        port=host.port,
        user=host.user,
        host_key=ssh.fetch_host_key(host.address, host.port),
        private_key=credential_reveal(credential=identity.credential),
    )
    session = ssh.connect(target)
    try:
        result = session.run(["echo", "a b; touch /tmp/pwned-$USER", "$(id)"])
        assert result.stdout == "a b; touch /tmp/pwned-$USER $(id)\n"
        with pytest.raises(TypeError):
            session.run("echo hi")  # type: ignore[arg-type]
    finally:
        session.close()


def test_an_unreachable_address_ends_in_error_with_the_reason():
    node = make_node(address="127.0.0.1", ssh_port=free_port(), ssh_user="root")
    enroll(node, host_key_fingerprint="SHA256:" + "B" * 43)
    node.refresh_from_db()
    assert node.state == NodeState.ERROR
    assert "cannot connect" in node.state_reason
    assert not node.agent_token_hash
    assert NodeEvent.objects.filter(node=node, kind="enrollment.failed").exists()
    # One item for the operator per failure: the move to error.
    attention = NodeEvent.objects.filter(node=node, needs_attention=True, acknowledged_at=None)
    assert list(attention.values_list("kind", flat=True)) == ["node.state_changed"]


def test_a_refused_key_ends_in_error_and_leaves_no_token(ssh_host_factory):
    host = ssh_host_factory.start()  # the SLM's key is not authorized here
    node = enroll(capture_and_accept(node_for(host)))
    assert node.state == NodeState.ERROR
    assert "authentication failed" in node.state_reason
    assert not node.agent_token_hash
    assert node.agent_token_credential is None
    assert not node.kernel  # no facts were stored


def test_a_password_installs_the_slm_key_and_is_forgotten(ssh_host_factory):
    password = secrets.token_urlsafe(16)
    host = ssh_host_factory.start(password_login=password)
    node = capture_and_accept(node_for(host, ssh_user=host.password_user))
    node = enroll(node, password=password)
    assert node.state == NodeState.ONLINE, node.state_reason
    assert node.bootstrap_credential is None
    assert not Credential.objects.filter(name=f"bootstrap:{node.name}").exists()
    authorized = (host.password_user_home / ".ssh" / "authorized_keys").read_text()
    assert enrollment.slm_identity().public_key in authorized
    # The key works on its own now: a connection test logs in without any password.
    assert enrollment.connection_test_run(node_id=str(node.pk), actor="user:ops")["login"] is True


def test_a_wrong_password_ends_in_error_and_is_forgotten(ssh_host_factory):
    host = ssh_host_factory.start(password_login=secrets.token_urlsafe(16))
    node = capture_and_accept(node_for(host, ssh_user=host.password_user))
    node = enroll(node, password="not-the-password")
    assert node.state == NodeState.ERROR
    assert "authentication failed" in node.state_reason
    assert node.bootstrap_credential is None
    assert not Credential.objects.filter(name__startswith="bootstrap:").exists()


def test_a_failed_node_can_be_enrolled_again(ssh_host_factory, identity):
    host = ssh_host_factory.start()
    node = enroll(capture_and_accept(node_for(host)))
    assert node.state == NodeState.ERROR
    port, host_key = host.port, host.host_key_path.read_bytes()
    saved = host.directory.parent / f"hostkey-{port}"
    saved.write_bytes(host_key)
    saved.chmod(0o600)
    ssh_host_factory.stop(host)
    ssh_host_factory.start(port=port, host_key=saved, authorized_keys=[identity.public_key])
    saved.unlink()
    node = enroll(node)
    assert node.state == NodeState.ONLINE, node.state_reason


def test_a_duplicate_task_delivery_does_nothing(host):
    node = enroll(capture_and_accept(node_for(host)))
    assert node.state == NodeState.ONLINE
    token_hash = node.agent_token_hash
    again = enrollment.enrollment_run(node_id=str(node.pk))
    assert again.state == NodeState.ONLINE
    assert Node.objects.get(pk=node.pk).agent_token_hash == token_hash


def test_the_bootstrap_password_leaves_no_trace(ssh_host_factory, caplog, tmp_path, monkeypatch):
    """A canary password used for an enrollment is afterwards in no database dump, log line, temp file
    or Celery message."""
    import logging
    import tempfile

    from tests.slm.secret_scan import (
        assert_absent,
        assert_absent_in_tree,
        broker_contents,
        canary,
        database_dump,
    )

    password = canary()
    host = ssh_host_factory.start(password_login=password)
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    caplog.set_level(logging.DEBUG)
    node = capture_and_accept(node_for(host, ssh_user=host.password_user))
    node = enroll(node, password=password)
    assert node.state == NodeState.ONLINE, node.state_reason

    dump = database_dump(tmp_path)
    assert node.name.encode() in dump  # the dump holds the fleet (or the scan proves nothing)
    assert_absent(password, dump, "the database dump")
    logged = caplog.text + "".join(f"{record.args!r}{record.exc_text or ''}" for record in caplog.records)
    assert "Authentication (password) successful" in logged  # the password was really used
    assert_absent(password, logged.encode(), "the logs")
    assert_absent_in_tree(password, temp_root)
    messages = broker_contents()
    assert str(node.pk).encode() in messages  # the enrollment was queued, by node id only
    assert_absent(password, messages, "the Celery broker")


def test_the_api_enrolls_through_a_real_worker(host, client):
    """The whole path: REST request → task queued by id on commit → a Celery worker → node online."""
    import json
    import time

    from celery.contrib.testing.worker import start_worker

    from slm_project import celery_app
    from slm_project.access.services import api_client_create

    node = capture_and_accept(node_for(host))
    _, token = api_client_create(name="ops-bot", scopes=["nodes:write", "nodes:read"])
    with start_worker(
        celery_app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=10,
        # Named: a worker started with ``queues=`` changes the app's queue selection for the rest of the
        # process, so a worker without them would consume whatever an earlier test chose.
        queues=["default"],
    ):
        response = client.post(
            f"/api/v1/nodes/{node.pk}/enroll",
            json.dumps({}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        assert response.status_code == 202, response.json()
        assert response.json()["state"] == "enrolling"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            node.refresh_from_db()
            if node.state != NodeState.ENROLLING:
                break
            time.sleep(0.2)
    assert node.state == NodeState.ONLINE, node.state_reason
