"""The business layer deployed end to end on the isolated test host (tests/fixtures/isolated_host.py):
the real ``redis``, ``backend`` and ``frontend`` roles through the Celery task by a real worker, the
backend bundle built here and installed there without a package index, then the running services checked
from this machine (through nginx and directly) and inside the host."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from http.client import HTTPResponse
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

from slm_project import celery_app
from slm_project.deployments import bundles, services
from slm_project.deployments.choices import FINISHED, RunStatus
from slm_project.deployments.models import DeploymentEvent, DeploymentRun
from slm_project.fleet import enrollment
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import NodeRoleStatus, NodeState
from slm_project.fleet.models import Node, NodeRole
from tests.slm.fleet.factories import make_node

pytestmark = pytest.mark.django_db(transaction=True)

REPO_DIR = Path(__file__).resolve().parents[3]
ROLES = ["redis", "backend", "frontend"]
BACKEND_SERVICES = ("autobot-business-web", "autobot-business-worker", "autobot-business-beat")
# The first run may build the backend bundle (pip wheel of the business requirements) and installs it
# into a virtualenv on the host.
RUN_WAIT_SECONDS = 900
RUN = "/usr/local/bin/autobot-backend-run"


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    enrollment._POOL.close_all()


@pytest.fixture
def work_dir(settings):
    """A short private work dir for the runs (SSH control socket paths must stay under 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="abb-"))
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


@pytest.fixture
def node(isolated_host, worker) -> Node:
    """The isolated host, enrolled the way an operator does it (test_deploy_e2e.py does the same)."""
    isolated_host.authorize(enrollment.slm_identity().public_key)
    node = make_node(address=isolated_host.address, ssh_port=isolated_host.port, ssh_user=isolated_host.user)
    enrollment.connection_test_run(node_id=str(node.pk), actor="user:ops")
    node.refresh_from_db()
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


@pytest.fixture
def pinned_bundles(monkeypatch):
    """Each bundle keeps the hash of its first build for the test. A changed source is rightly a new
    release (and a re-run that installs it changes things), but other work on this checkout may change
    a source between the test's two runs."""
    hashes: dict[str, str] = {}
    content_hash = bundles.content_hash
    monkeypatch.setattr(
        bundles, "content_hash", lambda spec: hashes.setdefault(spec.name, content_hash(spec))
    )


def deploy(node: Node) -> DeploymentRun:
    deployment = services.deployment_create(node_ids=[node.pk], roles=ROLES, requested_by="user:ops")
    run = deployment.runs.get()
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in FINISHED:
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run.pk} still {run.status} after {RUN_WAIT_SECONDS} s")


def failures(run: DeploymentRun, host) -> str:
    """The assertion message of a failed run: its reason, what its failed tasks said and the ends of the
    services' logs on the host."""
    failed = DeploymentEvent.objects.filter(run=run, failed=True).order_by("counter")
    logs = host.run(["sh", "-c", "tail -n 30 /var/log/autobot/*.log"], check=False).stdout
    return "\n".join(
        [run.status_reason, *(f"{event.task}: {event.stdout[-3000:]}" for event in failed), logs]
    )


def assert_events_complete(run: DeploymentRun) -> list[DeploymentEvent]:
    events = list(DeploymentEvent.objects.filter(run=run).order_by("counter"))
    assert run.events_stored == run.events_emitted == len(events)
    assert [event.counter for event in events] == list(range(1, len(events) + 1))
    assert events[0].event == "playbook_on_start"
    assert events[-1].event == "playbook_on_stats"
    return events


def get(url: str, **headers: str) -> HTTPResponse:
    """A GET that follows no redirect and raises for no status (the answer is what is checked)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=10)  # noqa: S310 - http only
    except urllib.error.HTTPError as exc:
        return exc  # an HTTPResponse-like answer with .status, .headers and .read()


def websocket_message(host: str, port: int, path: str, origin: str) -> tuple[str, dict]:
    """Open a websocket by hand (the upgrade through nginx is what is tested): the status line of the
    handshake and the first text frame, decoded as JSON."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, data = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].decode()
        while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data[0] & 0x0F == 1, data[:2]  # a text frame (short: a length under 126, no mask)
        length = data[1] & 0x7F
        return status, json.loads(data[2 : 2 + length])


def test_the_business_layer_is_deployed_for_real_and_a_rerun_changes_nothing(
    isolated_host, node, work_dir, pinned_bundles
):
    started = time.monotonic()
    run = deploy(node)
    first_seconds = time.monotonic() - started
    assert run.status == RunStatus.SUCCEEDED, failures(run, isolated_host)
    stats = run.host_stats[node.name]
    assert stats["changed"] > 0
    assert stats["failed"] == stats["unreachable"] == 0
    events = assert_events_complete(run)
    tasks = {event.task for event in events if event.event == "runner_on_ok"}
    assert {
        "Health check - the web app answers /healthz",
        "Health check - the Celery worker answers through Redis",
        "Health check - the web app answers through nginx",
        "Health check - nginx serves the static files",
    } <= tasks, tasks
    for role in ROLES:
        assert NodeRole.objects.get(node=node, role__name=role).status == NodeRoleStatus.ACTIVE

    address = isolated_host.address
    # Through nginx: the app's liveness, the login page, and "/" sent on to the chat.
    assert get(f"http://{address}:80/healthz").status == 200
    login = get(f"http://{address}/accounts/login/")
    page = login.read().decode()
    assert login.status == 200, page[:500]
    assert login.headers["Server"] == "nginx"
    assert 'name="password"' in page
    assert "csrfmiddlewaretoken" in page
    assert "/static/accounts/app.css" in page
    home = get(f"http://{address}/")
    assert home.status == 302
    assert home.headers["Location"].startswith("/chat/")
    # A static file is nginx's own, from the files collected on the node, byte for byte the repo's.
    for name in ("chat/chat.js", "accounts/app.css"):
        answer = get(f"http://{address}/static/{name}")
        assert answer.status == 200
        assert (
            answer.read()
            == (REPO_DIR / "business_project" / name.split("/")[0] / "static" / name).read_bytes()
        )
    collected = isolated_host.run(["readlink", "-f", "/var/www/autobot/static/chat/chat.js"]).stdout.strip()
    assert collected == "/var/www/autobot/static/chat/chat.js"
    # The websocket path is upgraded through nginx and the channel layer (Redis, with the vault's
    # password) carries a message.
    status, message = websocket_message(address, 80, "/ws/healthz/", origin=f"http://{address}")
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert message == {"status": "ok", "channel_layer": "ok"}

    # The ASGI server itself, from this machine.
    assert get(f"http://{address}:8000/healthz").status == 200

    # Inside the host: the services run as the backend's user, the Celery worker answers a ping through
    # Redis, beat runs, the configuration is private to that user.
    processes = isolated_host.run(["ps", "-e", "-ww", "-o", "user:20=,args="]).stdout.splitlines()
    for needle in (
        "uvicorn business_project.config.asgi:application",
        "celery -A business_project worker",
        "celery -A business_project beat",
    ):
        owners = {line.split()[0] for line in processes if needle in line}
        assert owners == {"autobot-backend"}, (needle, processes)
    for service in (*BACKEND_SERVICES, "nginx", "redis-server"):
        assert (
            isolated_host.run(["/usr/local/sbin/autobot-service", "status", service]).stdout.strip()
            == "running"
        )
    ping = isolated_host.run([RUN, "celery", "inspect", "ping", "--timeout", "5"], timeout=60)
    assert re.search(rf"business@{re.escape(node.name)}: OK", ping.stdout), ping.stdout + ping.stderr
    assert "pong" in ping.stdout
    assert isolated_host.run(["stat", "-c", "%a %U %G", "/etc/autobot/backend.env"]).stdout.split() == [
        "640",
        "root",
        "autobot-backend",
    ]
    # The backend uses the redis role's password (one secret in the vault, not a copy of its own).
    redis_password = services.vault_variable(role="redis", variable="redis_password")
    environment = isolated_host.run(["cat", "/etc/autobot/backend.env"]).stdout
    assert f"BUSINESS_REDIS_URL=redis://:{redis_password}@127.0.0.1:6379/0" in environment
    secrets = [
        redis_password,
        services.vault_variable(role="backend", variable="backend_secret_key"),
        services.vault_variable(role="backend", variable="backend_master_key"),
    ]
    assert all(secret in environment for secret in secrets)

    # No secret in any stored event, nor on a command line in the host; the run's files are gone.
    stored = json.dumps([[event.stdout, event.result, event.task] for event in events])
    for secret in secrets:
        assert secret not in stored
        assert not any(secret in line for line in processes)
    assert list(work_dir.iterdir()) == [], sorted(str(p) for p in work_dir.rglob("*"))

    web_pid = isolated_host.run(["cat", "/run/autobot-business-web.pid"]).stdout.strip()
    started = time.monotonic()
    rerun = deploy(node)
    rerun_seconds = time.monotonic() - started
    assert rerun.status == RunStatus.SUCCEEDED, failures(rerun, isolated_host)
    assert rerun.host_stats[node.name]["changed"] == 0, [
        event.task for event in DeploymentEvent.objects.filter(run=rerun, changed=True)
    ]
    assert_events_complete(rerun)
    # Nothing changed, so nothing was restarted.
    assert isolated_host.run(["cat", "/run/autobot-business-web.pid"]).stdout.strip() == web_pid
    print(f"\nfirst deploy {first_seconds:.1f} s, re-run {rerun_seconds:.1f} s")  # noqa: T201 - timing
