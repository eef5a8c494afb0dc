"""The remediator: a failed service of a node's role on a healthy node is restarted through service.yml,
with attempts and cooldowns kept in the database, and escalated exactly once when they run out (for real
against the isolated host at the end: redis-server killed, restarted, answering again)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from slm_project.deployments import actions, remediation, services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.models import Deployment, DeploymentAction, DeploymentRun, RemediationAttempt
from slm_project.deployments.runners import ansible
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import EventKind, NodeState, ServiceState, Trigger
from slm_project.fleet.models import NodeEvent, Role, Service
from slm_project.fleet.states import node_transition
from tests.slm.deployments import test_deploy_e2e
from tests.slm.deployments.factories import make_online_node
from tests.slm.deployments.test_deploy_e2e import deploy, wait_for_end
from tests.slm.fleet.factories import heartbeat

# The end-to-end fixtures, shared with the deployment end-to-end tests (pytest finds fixtures by the
# module attribute's name): a worker, the isolated host enrolled as a node, a private work dir.
_fresh_pool = test_deploy_e2e._fresh_pool
worker = test_deploy_e2e.worker
enrolled_node = test_deploy_e2e.node
run_work_dir = test_deploy_e2e.work_dir


@pytest.fixture
def sent(monkeypatch):
    """Deployments enqueue their run on commit; here nothing is sent anywhere (sent ids are recorded)."""
    sent = []
    monkeypatch.setattr(services, "enqueue_run", lambda run: sent.append(str(run.pk)))
    return sent


@pytest.fixture
def limits(settings):
    settings.DEPLOYMENTS_REMEDIATION_MAX_ATTEMPTS = 2
    settings.DEPLOYMENTS_REMEDIATION_COOLDOWN_SECONDS = 60


def finish(deployment: Deployment, status: str) -> None:
    DeploymentRun.objects.filter(deployment=deployment).update(status=status, finished_at=timezone.now())
    Deployment.objects.filter(pk=deployment.pk).update(status=status)


def redis_node(state: str = ServiceState.FAILED, **overrides):
    node = make_online_node(**overrides)
    fleet_services.node_roles_set(node=node, roles=["redis"])
    service = Service.objects.create(
        node=node, name="redis-server", role=Role.objects.get(name="redis"), port=6379, state=state
    )
    return node, service


def restarts(node) -> list[Deployment]:
    return list(
        Deployment.objects.filter(nodes=node, action__kind=DeploymentAction.Kind.SERVICE).order_by(
            "created_at"
        )
    )


def events(node, kind) -> list[NodeEvent]:
    return list(NodeEvent.objects.filter(node=node, kind=kind))


@pytest.mark.django_db
def test_a_failed_service_is_restarted_within_limits_and_escalated_once(sent, limits):
    node, service = redis_node()
    t0 = timezone.now()

    result = remediation.services_remediate(now=t0)
    assert result.restarted == [f"redis-server@{node.name}"]
    [first] = restarts(node)
    assert first.action.service_name == "redis-server"
    assert first.action.service_action == "restart"
    assert (first.roles, first.requested_by, sent) == (["redis"], "remediator", [str(first.runs.get().pk)])
    attempt = RemediationAttempt.objects.get(node=node, service_name="redis-server")
    assert (attempt.attempts, attempt.outcome, attempt.deployment) == (1, "pending", first)
    assert attempt.next_allowed_at == t0 + timedelta(seconds=60)
    assert len(events(node, EventKind.SERVICE_RESTART_REQUESTED)) == 1

    # The restart is still queued: nothing more. Then it failed, but the cooldown holds.
    assert remediation.services_remediate(now=t0 + timedelta(seconds=10)).waiting
    finish(first, RunStatus.FAILED)
    assert remediation.services_remediate(now=t0 + timedelta(seconds=30)).waiting
    attempt.refresh_from_db()
    assert (attempt.attempts, attempt.outcome) == (1, "failed")
    assert len(restarts(node)) == 1

    # After the cooldown, the second and last attempt; the next cooldown is twice as long.
    t1 = t0 + timedelta(seconds=61)
    assert remediation.services_remediate(now=t1).restarted
    second = restarts(node)[1]
    attempt.refresh_from_db()
    assert (attempt.attempts, attempt.next_allowed_at) == (2, t1 + timedelta(seconds=120))
    finish(second, RunStatus.SUCCEEDED)  # the run worked, yet the agent still reports the service failed
    assert remediation.services_remediate(now=t1 + timedelta(seconds=100)).waiting

    # Out of attempts: one attention event, once; no more restarts.
    t2 = t1 + timedelta(seconds=121)
    assert remediation.services_remediate(now=t2).escalated == [f"redis-server@{node.name}"]
    for later in (1, 600, 6000):
        result = remediation.services_remediate(now=t2 + timedelta(seconds=later))
        assert (result.restarted, result.escalated) == ([], [])
    [exhausted] = events(node, EventKind.REMEDIATION_EXHAUSTED)
    assert exhausted.needs_attention
    assert exhausted.severity == "critical"
    assert exhausted.data == {"service": "redis-server", "role": "redis", "attempts": 2, "max_attempts": 2}
    assert len(restarts(node)) == 2
    attempt.refresh_from_db()
    assert (attempt.outcome, attempt.escalated_at) == ("escalated", t2)

    # Once the agent reports it running again, the count starts over.
    Service.objects.filter(pk=service.pk).update(state=ServiceState.RUNNING)
    assert remediation.services_remediate(now=t2 + timedelta(hours=2)).recovered == [
        f"redis-server@{node.name}"
    ]
    attempt.refresh_from_db()
    assert (attempt.attempts, attempt.escalated_at, attempt.outcome) == (0, None, "recovered")
    Service.objects.filter(pk=service.pk).update(state=ServiceState.STOPPED)
    assert remediation.services_remediate(now=t2 + timedelta(hours=3)).restarted
    assert len(restarts(node)) == 3


@pytest.mark.django_db
def test_only_services_of_assigned_roles_on_healthy_idle_nodes_are_restarted(sent, limits):
    draining, _ = redis_node()
    fleet_services.node_drain(node=draining, actor="user:ops")
    erroring, _ = redis_node()
    fleet_services.node_mark_error(node=erroring, reason="down", actor="test")
    unassigned = make_online_node()
    Service.objects.create(node=unassigned, name="ollama", role=Role.objects.get(name="llm"), state="failed")
    busy, _ = redis_node()
    services.deployment_create(node_ids=[busy.pk], roles=["redis"], requested_by="user:ops")  # queued
    redis_node(state=ServiceState.RUNNING)  # nothing to do
    degraded, _ = redis_node(state=ServiceState.STOPPED)
    stopped_by_ops, _ = redis_node(state=ServiceState.STOPPED)
    stop, _ = actions.action_deployment_create(
        node=stopped_by_ops,
        roles=["redis"],
        kind=DeploymentAction.Kind.SERVICE,
        service_name="redis-server",
        service_action="stop",
        requested_by="user:ops",
        idempotency_key="ops-stop",
    )
    finish(stop, RunStatus.SUCCEEDED)
    node_transition(node=degraded, to_state=NodeState.DEGRADED, trigger=Trigger.HEALTH, actor="test")

    result = remediation.services_remediate()
    assert result.restarted == [f"redis-server@{degraded.name}"]
    assert result.waiting == [f"redis-server@{busy.name}"]
    assert [list(d.nodes.all()) for d in Deployment.objects.filter(requested_by="remediator")] == [[degraded]]
    assert not RemediationAttempt.objects.exclude(node=degraded).exists()


@pytest.mark.django_db
def test_a_service_deployment_runs_service_yml_with_the_allowlisted_unit(sent):
    node, _ = redis_node()
    deployment, created = actions.action_deployment_create(
        node=node,
        roles=["redis"],
        kind=DeploymentAction.Kind.SERVICE,
        service_name="redis-server",
        service_action="restart",
        requested_by="t",
        idempotency_key="svc-1",
    )
    assert created
    assert actions.action_deployment_create(
        node=node, roles=["redis"], kind="service", requested_by="t", idempotency_key="svc-1"
    ) == (deployment, False)
    spec = ansible.PlaybookRun(
        ident="r",
        playbook="deploy.yml",
        hosts=(),
        private_key=b"k",
        ansible_dir=services.ansible_dir(),
        timeout_seconds=60,
        extra_vars={"redis_maxmemory": "1mb"},
    )
    changed = actions.playbook_run_with_action(spec, deployment=deployment)
    assert (changed.playbook, changed.extra_vars, changed.check) == (
        "service.yml",
        {"service_name": "redis-server", "service_action": "restart"},
        False,
    )
    with pytest.raises(ValidationError):  # not a unit of the role: refused before anything is recorded
        actions.action_deployment_create(
            node=node,
            roles=["redis"],
            kind=DeploymentAction.Kind.SERVICE,
            service_name="ssh",
            service_action="stop",
            requested_by="t",
            idempotency_key="svc-2",
        )


# --------------------------------------------------------------------------------------------------
# For real against the isolated host


def report(node, sequence: int, state: str) -> None:
    """What the node's agent sends when redis-server is in ``state`` (a heartbeat, the real ingest)."""
    fleet_services.heartbeat_ingest(
        node=node,
        heartbeat=heartbeat(
            sequence,
            services=[{"name": "redis-server", "state": state, "port": 6379, "protocol": "tcp"}],
            roles=[{"role": "redis", "running": state == "running", "version": ""}],
        ),
    )


@pytest.mark.django_db(transaction=True)
def test_a_killed_redis_is_restarted_for_real_once_per_cooldown(
    isolated_host, enrolled_node, run_work_dir, settings
):
    settings.DEPLOYMENTS_REMEDIATION_COOLDOWN_SECONDS = 300
    node = enrolled_node
    assert deploy(node).status == RunStatus.SUCCEEDED
    password = services.vault_variable(role="redis", variable="redis_password")
    old_pid = isolated_host.run(["cat", "/run/redis-server.pid"]).stdout.strip()
    isolated_host.run(["kill", "-9", old_pid])
    assert isolated_host.run(
        ["/usr/local/sbin/autobot-service", "status", "redis-server"], check=False
    ).returncode
    # The agent reports it, as its heartbeat does: the node degrades, the service row says failed.
    report(node, 1, "failed")
    node.refresh_from_db()
    assert node.state == NodeState.DEGRADED

    result = remediation.services_remediate()
    assert result.restarted == [f"redis-server@{node.name}"]
    [restart] = restarts(node)
    run = wait_for_end(restart.runs.get())
    assert run.status == RunStatus.SUCCEEDED, run.status_reason
    new_pid = isolated_host.run(["cat", "/run/redis-server.pid"]).stdout.strip()
    assert new_pid != old_pid
    assert redis.Redis(host=isolated_host.address, port=6379, password=password, socket_timeout=5).ping()
    assert any("redis-server: running" in event.stdout for event in run.events.all())

    # Inside the cooldown (the agent has not reported yet) nothing more happens.
    again = remediation.services_remediate()
    assert again.waiting == [f"redis-server@{node.name}"]
    assert len(restarts(node)) == 1
    attempt = RemediationAttempt.objects.get(node=node, service_name="redis-server")
    assert (attempt.attempts, attempt.outcome) == (1, "succeeded")
    assert isolated_host.run(["cat", "/run/redis-server.pid"]).stdout.strip() == new_pid


@pytest.mark.django_db(transaction=True)
def test_a_redis_that_cannot_start_is_escalated_for_real_once(
    isolated_host, enrolled_node, run_work_dir, settings
):
    settings.DEPLOYMENTS_REMEDIATION_MAX_ATTEMPTS = 2
    settings.DEPLOYMENTS_REMEDIATION_COOLDOWN_SECONDS = 0
    node = enrolled_node
    assert deploy(node).status == RunStatus.SUCCEEDED
    definition = "/etc/autobot/services/redis-server.conf"
    original = isolated_host.run(["cat", definition]).stdout
    try:
        # Broken on the host: redis-server exits at once on a missing configuration file.
        isolated_host.run(["sed", "-i", "s|^ARGS=.*|ARGS=/etc/redis/missing.conf|", definition])
        isolated_host.run(["kill", "-9", isolated_host.run(["cat", "/run/redis-server.pid"]).stdout.strip()])
        report(node, 1, "failed")

        for attempt in (1, 2):
            assert remediation.services_remediate().restarted == [f"redis-server@{node.name}"]
            run = wait_for_end(restarts(node)[-1].runs.get())
            assert run.status == RunStatus.FAILED, f"attempt {attempt}: {run.status}"
        for _ in range(3):
            remediation.services_remediate()
        assert len(restarts(node)) == 2
        [exhausted] = events(node, EventKind.REMEDIATION_EXHAUSTED)
        assert exhausted.needs_attention
        assert len(events(node, EventKind.SERVICE_RESTART_REQUESTED)) == 2
    finally:
        isolated_host.run(["sh", "-c", 'cat > "$1"', "sh", definition], input=original)
        isolated_host.run(["/usr/local/sbin/autobot-service", "start", "redis-server"], check=False)
