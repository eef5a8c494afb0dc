"""Strategies and the maintenance policy hook.

Without Ansible: how a deployment is split into steps (``strategies.plan``), the strategy options a
deployment takes, and a policy refusal keeping a run queued with its reason (and the task sending it
again later). Against the isolated test host, with a real worker: a rolling deployment deploys batch
after batch with a health check after each and stops at the first unhealthy batch, later batches
untouched; a dependency-order deployment deploys role after role and stops at the first failing role.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from celery.exceptions import Retry
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from slm_project import celery_app
from slm_project.deployments import policy, services, strategies, tasks
from slm_project.deployments.choices import RunStatus, StepStatus, Strategy
from slm_project.deployments.models import DeploymentEvent, DeploymentRun
from slm_project.fleet import registry
from slm_project.fleet.choices import NodeRoleStatus
from slm_project.fleet.models import NodeRole
from tests.slm.deployments.factories import make_online_node
from tests.slm.deployments.worker_processes import node_at, wait_for_end

NODES = [("id-c", "node-c"), ("id-a", "node-a"), ("id-e", "node-e"), ("id-b", "node-b"), ("id-d", "node-d")]


# --------------------------------------------------------------------------------------------------
# Plans


def test_all_at_once_is_one_step_of_every_role_on_every_node():
    (step,) = strategies.plan(strategy=Strategy.ALL_AT_ONCE, roles=["slm-agent", "redis"], nodes=NODES)
    assert (step.name, step.roles, step.health_check) == ("all", ("slm-agent", "redis"), False)
    assert step.nodes == ("node-a", "node-b", "node-c", "node-d", "node-e")


def test_dependency_order_is_one_step_per_role_in_the_registrys_order():
    roles = registry.dependency_order(["frontend", "backend", "ai-stack", "redis"])
    assert roles == ["redis", "ai-stack", "backend", "frontend"]
    steps = strategies.plan(strategy=Strategy.DEPENDENCY_ORDER, roles=roles, nodes=NODES[:2])
    assert [(step.name, step.roles) for step in steps] == [
        ("role redis", ("redis",)),
        ("role ai-stack", ("ai-stack",)),
        ("role backend", ("backend",)),
        ("role frontend", ("frontend",)),
    ]
    assert all(step.nodes == ("node-a", "node-c") for step in steps)


@pytest.mark.parametrize(
    ("options", "batches"),
    [
        ({"batch_size": 2}, [("node-a", "node-b"), ("node-c", "node-d"), ("node-e",)]),
        ({"batch_size": 9}, [("node-a", "node-b", "node-c", "node-d", "node-e")]),
        ({"batch_percent": 40}, [("node-a", "node-b"), ("node-c", "node-d"), ("node-e",)]),
        ({"batch_percent": 10}, [("node-a",), ("node-b",), ("node-c",), ("node-d",), ("node-e",)]),
        ({"batch_percent": 50}, [("node-a", "node-b", "node-c"), ("node-d", "node-e")]),  # rounded up
    ],
)
def test_rolling_batches_by_size_or_percentage_in_node_name_order(options, batches):
    steps = strategies.plan(strategy=Strategy.ROLLING, roles=["redis"], nodes=NODES, **options)
    assert [step.nodes for step in steps] == batches
    assert [step.name for step in steps] == [f"batch {n}/{len(batches)}" for n in range(1, len(batches) + 1)]
    assert all(step.health_check and step.roles == ("redis",) for step in steps)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("strategy", "options", "message"),
    [
        (Strategy.ROLLING, {}, "takes batch_size or batch_percent"),
        (Strategy.ROLLING, {"batch_size": 1, "batch_percent": 50}, "takes batch_size or batch_percent"),
        (Strategy.ROLLING, {"batch_size": 0}, "batch_size: a whole number of nodes, at least 1"),
        (Strategy.ROLLING, {"batch_size": "2"}, "batch_size: a whole number of nodes, at least 1"),
        (Strategy.ROLLING, {"batch_percent": 101}, "batch_percent: a whole percentage from 1 to 100"),
        (Strategy.ROLLING, {"batch_count": 2}, "Unknown options of the rolling strategy: batch_count"),
        (Strategy.ALL_AT_ONCE, {"batch_size": 2}, "Unknown options of the all_at_once strategy"),
    ],
)
def test_bad_strategy_options_are_refused(monkeypatch, strategy, options, message):
    monkeypatch.setattr(services, "enqueue_run", lambda run: None)
    with pytest.raises(ValidationError) as excinfo:
        services.deployment_create(
            node_ids=[make_online_node().pk],
            roles=["redis"],
            requested_by="user:ops",
            strategy=strategy,
            strategy_options=options,
        )
    assert message in str(excinfo.value.detail["strategy_options"])


# --------------------------------------------------------------------------------------------------
# The maintenance policy hook


@pytest.mark.django_db
def test_a_policy_refusal_keeps_the_run_queued_with_its_reason_until_the_policy_allows(monkeypatch):
    sent = []
    monkeypatch.setattr(services, "enqueue_run", lambda run: sent.append(run.pk))
    asked = []
    retry_at = timezone.now() + timedelta(minutes=2)

    def refuse(deployment):
        asked.append(deployment.pk)
        return policy.Decision(allowed=False, reason="maintenance window 'db upgrade'", retry_at=retry_at)

    monkeypatch.setattr(policy, "may_start", refuse)
    deployment = services.deployment_create(
        node_ids=[make_online_node().pk], roles=["redis"], requested_by="user:ops"
    )
    run = deployment.runs.get()
    with pytest.raises(services.RunWaiting) as excinfo:
        services.deployment_run_claim(run_id=run.pk, owner="worker-a")
    assert asked == [deployment.pk]
    assert 100 <= excinfo.value.retry_in <= 120  # asked again when the policy said
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert run.status_reason.startswith("waiting: maintenance window 'db upgrade' (asked again at ")
    assert (run.fencing_token, run.lease_owner, run.started_at) == (0, "", None)
    assert not run.node_locks.exists()

    # The task does not run it: it sends it again later (a countdown, not a busy loop).
    with pytest.raises(Retry) as retried:
        tasks.execute_run.apply(args=[str(run.pk)], throw=True)
    assert 100 <= retried.value.when <= 120

    monkeypatch.setattr(policy, "may_start", lambda deployment: policy.ALLOW)
    lease = services.deployment_run_claim(run_id=run.pk, owner="worker-a")
    run.refresh_from_db()
    assert (run.status, run.status_reason, lease.token) == (RunStatus.RUNNING, "", 1)


def test_the_default_policy_allows():
    assert policy.may_start(None) == policy.Decision(allowed=True)


# --------------------------------------------------------------------------------------------------
# Against the isolated host


@pytest.fixture
def work_dir(settings):
    directory = Path(tempfile.mkdtemp(prefix="abs-"))
    settings.DEPLOYMENTS_WORK_DIR = str(directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def worker(work_dir):
    with start_worker(
        celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30, queues=["deployments"]
    ) as running:
        yield running


def events_of(run: DeploymentRun) -> list[DeploymentEvent]:
    events = list(DeploymentEvent.objects.filter(run=run).order_by("counter"))
    assert [event.counter for event in events] == list(range(1, len(events) + 1))
    assert run.events_stored == run.events_emitted == len(events)
    return events


def failures(run: DeploymentRun) -> str:
    """What failed in a run, for assertion messages."""
    failed = DeploymentEvent.objects.filter(run=run, failed=True).order_by("counter")
    return f"{run.status_reason}: " + "; ".join(f"{e.host} {e.task}: {e.stdout[-500:]}" for e in failed)


def plays_run(events: list[DeploymentEvent]) -> list[str]:
    """The plays that ran tasks, in order (a play whose group is absent from a step runs none)."""
    plays: list[str] = []
    for event in events:
        if event.event == "runner_on_start" and (not plays or plays[-1] != event.play):
            plays.append(event.play)
    return plays


def role_status(node, role: str) -> str:
    return NodeRole.objects.get(node=node, role__name=role).status


@pytest.mark.django_db(transaction=True)
def test_rolling_deploys_batch_after_batch_each_checked_healthy(isolated_host, work_dir, worker):
    first, second = node_at(isolated_host, name="roll-1"), node_at(isolated_host, name="roll-2")
    deployment = services.deployment_create(
        node_ids=[second.pk, first.pk],
        roles=["redis"],
        requested_by="user:ops",
        strategy=Strategy.ROLLING,
        strategy_options={"batch_size": 1},
    )
    run = wait_for_end(deployment.runs.get())
    assert run.status == RunStatus.SUCCEEDED, failures(run)
    assert [(step["name"], step["nodes"], step["status"]) for step in run.steps] == [
        ("batch 1/2", ["roll-1"], StepStatus.SUCCEEDED),
        ("batch 2/2", ["roll-2"], StepStatus.SUCCEEDED),
    ]
    events = events_of(run)
    # Four playbooks, in order: deploy roll-1, its health check, deploy roll-2, its health check.
    assert plays_run(events) == ["Baseline on every target", "Redis", "Health check"] * 2
    hosts = [event.host for event in events if event.host]
    boundary = max(i for i, host in enumerate(hosts) if host == "roll-1")
    assert set(hosts[: boundary + 1]) == {"roll-1"}
    assert set(hosts[boundary + 1 :]) == {"roll-2"}
    health = [e for e in events if e.task == "TCP probes answer" and e.event == "runner_on_ok"]
    assert [event.host for event in health] == ["roll-1", "roll-2"], [
        (e.event, e.host, e.task) for e in events if e.play == "Health check"
    ]
    assert role_status(first, "redis") == role_status(second, "redis") == NodeRoleStatus.ACTIVE


@pytest.mark.django_db(transaction=True)
def test_rolling_stops_at_the_first_unhealthy_batch_and_leaves_later_batches_untouched(
    isolated_host, work_dir, worker, monkeypatch
):
    # The registry's probe of redis points at a port where nothing listens: the deploy of the first
    # batch succeeds, its health check fails.
    broken = replace(registry.ROLES["redis"], health_probe={"type": "tcp", "port": 6390})
    monkeypatch.setitem(registry.ROLES, "redis", broken)
    monkeypatch.setattr("slm_project.deployments.constants.HEALTH_PROBE_TIMEOUT_SECONDS", 2)
    monkeypatch.setattr("slm_project.deployments.execution.HEALTH_PROBE_TIMEOUT_SECONDS", 2)
    nodes = [node_at(isolated_host, name=f"bad-{n}") for n in (1, 2, 3)]
    deployment = services.deployment_create(
        node_ids=[node.pk for node in nodes],
        roles=["redis"],
        requested_by="user:ops",
        strategy=Strategy.ROLLING,
        strategy_options={"batch_percent": 34},  # 2 nodes, then 1
    )
    run = wait_for_end(deployment.runs.get())
    assert run.status == RunStatus.FAILED
    assert run.status_reason == "batch 1/2: health check failed on bad-1, bad-2; 1 later step not started"
    assert [(step["nodes"], step["status"]) for step in run.steps] == [
        (["bad-1", "bad-2"], StepStatus.FAILED),
        (["bad-3"], StepStatus.SKIPPED),
    ]
    deployment.refresh_from_db()
    assert deployment.status == RunStatus.FAILED
    events = events_of(run)
    assert "bad-3" not in {event.host for event in events}
    assert any(e.task == "TCP probes answer" and e.event == "runner_on_failed" for e in events)
    assert role_status(nodes[0], "redis") == role_status(nodes[1], "redis") == NodeRoleStatus.FAILED
    assert role_status(nodes[2], "redis") == NodeRoleStatus.ASSIGNED  # never touched


@pytest.mark.django_db(transaction=True)
def test_dependency_order_deploys_role_after_role_and_stops_at_the_first_failing_one(
    isolated_host, work_dir, worker, settings
):
    settings.DEPLOYMENTS_SLM_URL = f"http://{isolated_host.host_side_address}:9"
    node = node_at(isolated_host, name="dep-1", agent_token=True)

    def deploy(**extra_vars):
        deployment = services.deployment_create(
            node_ids=[node.pk],
            roles=["redis", "slm-agent"],
            requested_by="user:ops",
            strategy=Strategy.DEPENDENCY_ORDER,
            extra_vars=extra_vars,
        )
        return wait_for_end(deployment.runs.get())

    run = deploy(slm_agent_interval_seconds=5)
    assert run.status == RunStatus.SUCCEEDED, failures(run)
    assert [(step["name"], step["status"]) for step in run.steps] == [
        ("role slm-agent", StepStatus.SUCCEEDED),
        ("role redis", StepStatus.SUCCEEDED),
    ]
    plays = plays_run(events_of(run))
    assert plays == ["Baseline on every target", "SLM agent", "Baseline on every target", "Redis"]

    # An agent that cannot start (its interval must be positive) fails its role's health check: the
    # slm-agent step fails and redis is not deployed by this run.
    failing = deploy(slm_agent_interval_seconds=0)
    assert failing.status == RunStatus.FAILED
    assert failing.status_reason == "role slm-agent: failed on dep-1; 1 later step not started"
    assert [step["status"] for step in failing.steps] == [StepStatus.FAILED, StepStatus.SKIPPED]
    assert plays_run(events_of(failing)) == ["Baseline on every target", "SLM agent"]
    assert role_status(node, "slm-agent") == NodeRoleStatus.FAILED
    assert role_status(node, "redis") == NodeRoleStatus.ACTIVE  # from the first deployment, untouched
    # Put a working agent back for the tests after this one.
    assert deploy(slm_agent_interval_seconds=30).status == RunStatus.SUCCEEDED
