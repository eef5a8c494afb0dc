"""Deployments end to end against the isolated test host (tests/fixtures/isolated_host.py): a node
enrolled through the enrollment task, the real ``redis`` role deployed through the Celery task by a real
worker, and what a run leaves behind checked on both sides."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from slm_project import celery_app
from slm_project.deployments import services
from slm_project.deployments.choices import FINISHED, RunStatus
from slm_project.deployments.models import DeploymentEvent, DeploymentRun
from slm_project.fleet import enrollment
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import NodeRoleStatus, NodeState
from slm_project.fleet.models import Node, NodeRole
from tests.slm.fleet.factories import make_node

pytestmark = pytest.mark.django_db(transaction=True)

RUN_WAIT_SECONDS = 180


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    enrollment._POOL.close_all()


@pytest.fixture
def work_dir(settings):
    """A short private work dir for the runs (SSH control socket paths must stay under 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="abd-"))
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


def deploy(node: Node, **overrides) -> DeploymentRun:
    values = {"node_ids": [node.pk], "roles": ["redis"], "requested_by": "user:ops"} | overrides
    deployment = services.deployment_create(**values)
    return wait_for_end(deployment.runs.get())


def assert_events_complete(run: DeploymentRun) -> list[DeploymentEvent]:
    events = list(DeploymentEvent.objects.filter(run=run).order_by("counter"))
    assert run.events_emitted > 10
    assert run.events_stored == run.events_emitted == len(events)
    assert [event.counter for event in events] == list(range(1, len(events) + 1))
    assert events[0].event == "playbook_on_start"
    assert events[-1].event == "playbook_on_stats"
    return events


def processes() -> str:
    return subprocess.run(
        ["ps", "-e", "-ww", "-o", "args="], capture_output=True, text=True, check=True
    ).stdout


def test_redis_is_deployed_for_real_and_a_rerun_changes_nothing(isolated_host, node, work_dir):
    # Package lists a week old, as on any long-lived host: with every package present, a deploy must not
    # try to refresh them (this host, like many, has no route to the registries).
    isolated_host.run(["sh", "-c", "touch -d '7 days ago' /var/lib/apt/lists/*"])
    started = time.monotonic()
    run = deploy(node, extra_vars={"redis_maxmemory": "64mb"})
    first_seconds = time.monotonic() - started
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    stats = run.host_stats[node.name]
    assert stats["changed"] > 0
    assert stats["failed"] == stats["unreachable"] == 0
    events = assert_events_complete(run)
    changed = {event.task for event in events if event.changed and event.event == "runner_on_ok"}
    # The configuration task itself is no_log (its result, "changed" included, is hidden); what it set
    # off shows: the restart by the handler.
    assert "redis-server is restarted (direct)" in changed, changed
    assert NodeRole.objects.get(node=node, role__name="redis").status == NodeRoleStatus.ACTIVE

    # The server inside the namespace answers with the vault's password, and only with it.
    password = services.vault_variable(role="redis", variable="redis_password")
    assert redis.Redis(host=isolated_host.address, port=6379, password=password, socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=isolated_host.address, port=6379, password="wrong-password", socket_timeout=5).ping()
    assert redis.Redis(host=isolated_host.address, port=6379, password=password).config_get("maxmemory") == {
        "maxmemory": str(64 * 1024 * 1024)
    }
    # The password is in no stored event and the run's files are gone.
    stored = json.dumps([[event.stdout, event.result, event.task] for event in events])
    assert password not in stored
    assert list(work_dir.iterdir()) == [], sorted(str(p) for p in work_dir.rglob("*"))

    started = time.monotonic()
    rerun = deploy(node, extra_vars={"redis_maxmemory": "64mb"})
    rerun_seconds = time.monotonic() - started
    assert rerun.status == RunStatus.SUCCEEDED, rerun.status_reason
    assert rerun.host_stats[node.name]["changed"] == 0, [
        event.task for event in DeploymentEvent.objects.filter(run=rerun, changed=True)
    ]
    assert_events_complete(rerun)
    print(f"\nfirst deploy {first_seconds:.1f} s, re-run {rerun_seconds:.1f} s")  # noqa: T201 - timing


def test_cancel_mid_run_stops_ansible_and_leaves_nothing(isolated_host, node, work_dir):
    deployment = services.deployment_create(node_ids=[node.pk], roles=["redis"], requested_by="user:ops")
    run = deployment.runs.get()
    # Cancel as soon as the run has stored its first task events (it is in the middle of the play).
    deadline = time.monotonic() + 60
    while not DeploymentEvent.objects.filter(run=run, event="runner_on_start").exists():
        assert time.monotonic() < deadline, "the run never started a task"
        time.sleep(0.05)
    services.deployment_cancel(deployment=deployment, actor="user:ops")
    run = wait_for_end(run)
    assert run.status == RunStatus.CANCELED, run.status_reason
    assert run.status_reason == "canceled by user:ops"
    assert not DeploymentEvent.objects.filter(run=run, event="playbook_on_stats").exists()
    assert run.events_stored == DeploymentEvent.objects.filter(run=run).count()
    # No Ansible or SSH process of the run is left, and its private data dir is gone.
    time.sleep(0.5)
    assert str(work_dir) not in processes()
    assert list(work_dir.iterdir()) == [], sorted(str(p) for p in work_dir.rglob("*"))


def test_a_duplicate_delivery_does_not_run_the_run_twice(isolated_host, node, work_dir):
    deployment = services.deployment_create(node_ids=[node.pk], roles=["redis"], requested_by="user:ops")
    run = deployment.runs.get()
    # The broker delivers the same message again (a redelivery after a lost ack, say), and a second
    # executor in this process tries the run at the same time as the worker.
    duplicate = celery_app.send_task(services.EXECUTE_TASK, args=[str(run.pk)], queue=services.EXECUTE_QUEUE)
    concurrent: list[str] = []
    deadline = time.monotonic() + 60
    while DeploymentRun.objects.get(pk=run.pk).status == RunStatus.QUEUED:
        assert time.monotonic() < deadline, "the worker never claimed the run"
        time.sleep(0.02)

    def second_executor() -> None:
        from django.db import connection

        try:
            services.deployment_run_claim(run_id=run.pk, owner="second")
            concurrent.append("claimed")
        except services.RunNotClaimable as exc:
            concurrent.append(str(exc.detail))
        finally:
            connection.close()

    thread = threading.Thread(target=second_executor)
    thread.start()
    thread.join()
    run = wait_for_end(run)
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    assert len(concurrent) == 1
    assert "a run is started only once" in concurrent[0]
    assert duplicate.get(timeout=RUN_WAIT_SECONDS) == "skipped"
    assert run.fencing_token == 1  # claimed once
    assert_events_complete(run)
    assert DeploymentEvent.objects.filter(run=run, event="playbook_on_start").count() == 1


def test_the_agent_is_deployed_with_the_nodes_own_token(isolated_host, node, work_dir, settings):
    from slm_project.security.services import credential_reveal

    # Nothing listens there: the agent buffers its heartbeats, which is all this test needs.
    settings.DEPLOYMENTS_SLM_URL = f"http://{isolated_host.host_side_address}:9"
    run = deploy(node, roles=["slm-agent"], extra_vars={"slm_agent_interval_seconds": 5})
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    events = assert_events_complete(run)
    processes_there = isolated_host.processes()
    log = isolated_host.run(["tail", "-n", "20", "/var/log/autobot/autobot-agent.log"], check=False).stdout
    assert any(
        "/opt/autobot/agent/autobot_agent.py --config /etc/autobot/agent.json" in line
        for line in processes_there
    ), (processes_there, log)
    token = credential_reveal(credential=Node.objects.get(pk=node.pk).agent_token_credential).decode()
    on_host = isolated_host.run(["stat", "-c", "%a %U", "/etc/autobot/agent.token"]).stdout.split()
    assert on_host == ["600", "autobot-agent"]
    assert isolated_host.run(["cat", "/etc/autobot/agent.token"]).stdout.strip() == token
    config = json.loads(isolated_host.run(["cat", "/etc/autobot/agent.json"]).stdout)
    assert (config["node_id"], config["interval_seconds"], config["service_manager"]) == (
        str(node.pk),
        5,
        "direct",
    )
    assert token not in json.dumps([[event.stdout, event.result] for event in events])


def test_the_service_playbook_drives_allowlisted_services_only(isolated_host, node, work_dir):
    """service.yml through the adapter: an allowlisted unit is restarted, anything else is refused."""
    from slm_project.deployments.runners import ansible
    from slm_project.fleet.enrollment import slm_identity
    from slm_project.security.services import credential_reveal

    assert deploy(node).status == RunStatus.SUCCEEDED  # redis is there to be restarted
    node.refresh_from_db()
    target = ansible.TargetHost(
        name=node.name,
        address=node.address,
        port=node.ssh_port,
        user=node.ssh_user,
        host_key=f"{node.host_key_type} {node.host_key}",
        groups=(),
    )

    def service(name: str, action: str) -> tuple[ansible.RunOutcome, list[dict]]:
        events: list[dict] = []
        outcome = ansible.run_playbook(
            ansible.PlaybookRun(
                ident=f"service-{name}",
                playbook="service.yml",
                hosts=(target,),
                private_key=credential_reveal(credential=slm_identity().credential),
                ansible_dir=services.ansible_dir(),
                timeout_seconds=120,
                extra_vars={"service_name": name, "service_action": action},
            ),
            on_events=events.extend,
            should_cancel=lambda: False,
            base_dir=work_dir,
        )
        return outcome, events

    pid_before = isolated_host.run(["cat", "/run/redis-server.pid"]).stdout.strip()
    outcome, events = service("redis-server", "restart")
    assert outcome.status == "successful"
    assert outcome.host_stats[node.name]["changed"] == 1
    assert isolated_host.run(["cat", "/run/redis-server.pid"]).stdout.strip() != pid_before
    assert any("redis-server: running" in event["stdout"] for event in events)

    refused, events = service("ssh", "stop")
    assert refused.status == "failed"
    assert any("refused: service ssh, action stop" in event["stdout"] for event in events)
    assert list(work_dir.iterdir()) == []
