"""The node lifecycle end to end against the isolated test host (tests/fixtures/isolated_host.py): an
enrollment that makes the node ready by itself (enroll.yml: the baseline and the node agent, whose first
heartbeat reaches a live SLM), a deployment of redis, and a decommission that removes AutoBot from the
machine (decommission.yml) before the node becomes ``decommissioned``. Real worker, real Ansible, real
sshd; what is left behind is checked inside the host."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

from slm_project import celery_app
from slm_project.deployments import services
from slm_project.deployments.choices import FINISHED, RunStatus
from slm_project.deployments.models import Deployment, DeploymentAction, DeploymentEvent, DeploymentRun
from slm_project.fleet import enrollment
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import EventKind, NodeRoleStatus, NodeState
from slm_project.fleet.models import Node, NodeEvent, NodeRole
from tests.slm.fleet.factories import make_node

pytestmark = pytest.mark.django_db(transaction=True)

RUN_WAIT_SECONDS = 240
AGENT = "/opt/autobot/agent/autobot_agent.py"


# --- fixtures (as in test_deploy_e2e.py, plus a live SLM the agent reports to) ----------------------------


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    enrollment._POOL.close_all()


@pytest.fixture
def work_dir(settings):
    """A short private work dir for the runs (SSH control socket paths must stay under 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="abl-"))
    settings.DEPLOYMENTS_WORK_DIR = str(directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def worker():
    with start_worker(
        celery_app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=30,
        queues=["default", "deployments"],
    ) as running:
        yield running


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # the agent's heartbeats would flood the test output
        pass


@pytest.fixture
def slm_url(isolated_host, settings):
    """The SLM's web application on this machine's end of the host's veth pair, serving the test
    database: the URL the agent inside the host reports to (``SLM_PUBLIC_URL``)."""
    server = ThreadedWSGIServer((isolated_host.host_side_address, 0), _QuietHandler)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, isolated_host.host_side_address]
    settings.DEPLOYMENTS_SLM_URL = f"http://{isolated_host.host_side_address}:{server.server_port}"
    yield settings.DEPLOYMENTS_SLM_URL
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def node(isolated_host, worker, slm_url, work_dir) -> Node:
    """The isolated host, enrolled the way an operator does it: capture and accept its key, then the
    enrollment task (through the worker) logs in with the SLM's own key."""
    isolated_host.authorize(enrollment.slm_identity().public_key)
    node = make_node(address=isolated_host.address, ssh_port=isolated_host.port, ssh_user=isolated_host.user)
    enrollment.connection_test_run(node_id=str(node.pk), actor="user:ops")
    node.refresh_from_db()
    assert node.pending_host_key_fingerprint == isolated_host.host_key_fingerprint
    node = fleet_services.node_host_key_accept(
        node=node, fingerprint=node.pending_host_key_fingerprint, actor="user:ops"
    )
    node = enrollment.node_enroll_request(node=node, actor="user:ops")
    deadline = time.monotonic() + 60
    while node.state == NodeState.ENROLLING and time.monotonic() < deadline:
        time.sleep(0.2)
        node.refresh_from_db()
    assert node.state == NodeState.ONLINE, node.state_reason
    return node


def wait_for_end(run: DeploymentRun) -> DeploymentRun:
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in FINISHED:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run.pk} still {run.status} after {RUN_WAIT_SECONDS} s")


def action_run(node: Node, kind: str) -> DeploymentRun:
    deployment = Deployment.objects.get(nodes=node, action__kind=kind)
    return wait_for_end(deployment.runs.get())


def assert_events_complete(run: DeploymentRun) -> list[DeploymentEvent]:
    events = list(DeploymentEvent.objects.filter(run=run).order_by("counter"))
    assert run.events_stored == run.events_emitted == len(events)
    assert [event.counter for event in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "playbook_on_stats"
    return events


def exists(isolated_host, path: str) -> bool:
    return isolated_host.run(["test", "-e", path], check=False).returncode == 0


def autobot_processes(isolated_host) -> list[str]:
    """AutoBot's programs (not the login user's ``sshd: autobot@notty`` sessions)."""
    markers = ("/opt/autobot", "/etc/autobot", "autobot_agent", "autobot-service", "redis-server")
    return [line for line in isolated_host.processes() if any(marker in line for marker in markers)]


def other_public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{blob} someone-else@laptop"


def enroll_and_check_ready(isolated_host, node: Node) -> None:
    """The enrollment queued enroll.yml; it ran, and the agent it started reports to the live SLM."""
    started = time.monotonic()
    run = action_run(node, DeploymentAction.Kind.ENROLL)
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert_events_complete(run)
    assert NodeEvent.objects.filter(node=node, kind=EventKind.SETUP_STARTED).exists()
    agents = [line for line in isolated_host.processes() if AGENT in line]
    assert len(agents) == 1, isolated_host.processes()
    # enroll.yml waited for the agent's first heartbeat: the live SLM has stored it.
    node.refresh_from_db()
    assert node.last_heartbeat_at is not None
    assert node.state == NodeState.ONLINE
    assert NodeRole.objects.get(node=node, role__name="slm-agent").status == NodeRoleStatus.ACTIVE
    print(f"\nenroll.yml {time.monotonic() - started:.1f} s")  # noqa: T201 - timing


def decommission(node: Node, **options) -> DeploymentRun:
    pending = fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops", **options)
    assert pending.state == NodeState.ONLINE  # until the cleanup succeeded
    started = time.monotonic()
    run = action_run(node, DeploymentAction.Kind.DECOMMISSION)
    print(f"\ndecommission.yml {time.monotonic() - started:.1f} s")  # noqa: T201 - timing
    return run


# --- the tests --------------------------------------------------------------------------------------------


def test_enroll_deploy_and_decommission_leave_nothing_of_autobot(isolated_host, node):
    enroll_and_check_ready(isolated_host, node)

    deployment = services.deployment_create(node_ids=[node.pk], roles=["redis"], requested_by="user:ops")
    run = wait_for_end(deployment.runs.get())
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert any("redis-server" in line for line in isolated_host.processes())

    # What is not AutoBot's must survive: another login key, another program's file.
    other_key = other_public_key()
    isolated_host.authorize(other_key)
    isolated_host.run(["sh", "-c", "mkdir -p /etc/other-app && echo keep > /etc/other-app/app.conf"])
    slm_key = enrollment.slm_identity().public_key

    run = decommission(node, reason="retired")
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    events = assert_events_complete(run)
    assert events[-2].task == "The SLM's key leaves autobot's authorized_keys"  # the last task of all

    # The node is decommissioned, its token revoked.
    node.refresh_from_db()
    assert node.state == NodeState.DECOMMISSIONED
    assert (node.agent_token_hash, node.agent_token_credential) == ("", None)
    assert node.transitions.get(to_state=NodeState.DECOMMISSIONED).actor == "user:ops"

    # Inside the host: no AutoBot process, none of its files; its data is kept (no purge).
    assert autobot_processes(isolated_host) == []
    for gone in (
        "/opt/autobot",
        "/etc/autobot",
        "/usr/local/sbin/autobot-service",
        "/var/lib/autobot-agent",
        "/etc/redis/redis.conf",  # it held the vault's password
        "/run/redis-server.pid",
        "/run/autobot-agent.pid",
    ):
        assert not exists(isolated_host, gone), gone
    assert isolated_host.run(["getent", "passwd", "autobot-agent"], check=False).returncode == 2
    for kept in ("/var/lib/autobot", "/var/lib/redis", "/var/log/autobot", "/etc/other-app/app.conf"):
        assert exists(isolated_host, kept), kept
    keys = isolated_host.run(["cat", f"/home/{isolated_host.user}/.ssh/authorized_keys"]).stdout
    assert slm_key.split()[1] not in keys
    assert other_key in keys.splitlines()

    # The SLM's key no longer opens the machine.
    enrollment._POOL.close_all()
    result = enrollment.connection_test_run(node_id=str(node.pk), actor="user:ops")
    assert result["reachable"] is True
    assert "login" not in result
    assert "authentication failed" in result["error"]
    isolated_host.run(["rm", "-rf", "/etc/other-app"])


def test_a_decommission_with_purge_deletes_the_data_too(isolated_host, node):
    enroll_and_check_ready(isolated_host, node)
    isolated_host.run(["sh", "-c", "mkdir -p /var/lib/autobot/chat && echo data > /var/lib/autobot/chat/db"])

    run = decommission(node, purge_data=True)
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert Node.objects.get(pk=node.pk).state == NodeState.DECOMMISSIONED
    assert autobot_processes(isolated_host) == []
    for gone in ("/opt/autobot", "/etc/autobot", "/var/lib/autobot", "/var/log/autobot"):
        assert not exists(isolated_host, gone), gone
    # Redis was not deployed on this node (its package is there all the same): its data is not AutoBot's.
    assert exists(isolated_host, "/var/lib/redis")
    # A second decommission is refused: the node is gone for good.
    with pytest.raises(fleet_services.TransitionNotAllowed):
        fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
