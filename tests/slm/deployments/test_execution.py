"""No overlap: two runs that touch the same node never run at the same time; runs on disjoint nodes do.

Two real Celery worker processes take two runs sent at the same moment. Each run's interval is read from
the database (``started_at`` … ``finished_at``, written by the claim and the end of the run). Nodes are
rows pointing at the isolated test host; two rows are two nodes to the SLM.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from django.db import transaction

from slm_project.deployments import execution, services
from slm_project.deployments.choices import FINISHED, RunStatus
from slm_project.deployments.models import DeploymentNodeLock, DeploymentRun
from slm_project.deployments.runners import ansible
from tests.slm.deployments.factories import make_online_node
from tests.slm.deployments.worker_processes import (
    RUN_WAIT_SECONDS,
    WorkerProcess,
    kill_processes_under,
    node_at,
)


@pytest.fixture
def workers(tmp_path):
    work_dir = Path(tempfile.mkdtemp(prefix="abx-"))
    pair = [WorkerProcess(name, tmp_path, work_dir=work_dir) for name in ("one", "two")]
    try:
        for worker in pair:
            worker.start()
        yield pair
    finally:
        for worker in pair:
            worker.stop()
        kill_processes_under(work_dir)
        shutil.rmtree(work_dir, ignore_errors=True)


def start_together(*nodes) -> list[DeploymentRun]:
    """One deployment of redis per node given, committed (and so sent) together."""
    with transaction.atomic():
        deployments = [
            services.deployment_create(node_ids=[node.pk], roles=["redis"], requested_by="user:ops")
            for node in nodes
        ]
    return [deployment.runs.get() for deployment in deployments]


def wait_for_all(runs: list[DeploymentRun]) -> tuple[list[DeploymentRun], set[str]]:
    """The runs once all ended, and every waiting reason seen on them meanwhile."""
    reasons: set[str] = set()
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while time.monotonic() < deadline:
        rows = list(DeploymentRun.objects.filter(pk__in=[run.pk for run in runs]))
        reasons |= {row.status_reason for row in rows if row.status == RunStatus.QUEUED and row.status_reason}
        if all(row.status in FINISHED for row in rows):
            return sorted(rows, key=lambda row: row.started_at), reasons
        time.sleep(0.1)
    raise AssertionError(f"runs did not end: {[(row.status, row.status_reason) for row in rows]}")


@pytest.mark.django_db
def test_a_claim_locks_the_runs_nodes_and_a_run_sharing_one_waits(monkeypatch):
    monkeypatch.setattr(services, "enqueue_run", lambda run: None)
    shared, alone, other = make_online_node(), make_online_node(), make_online_node()

    def run_on(*nodes):
        node_ids = [node.pk for node in nodes]
        return services.deployment_create(node_ids=node_ids, roles=["redis"], requested_by="u").runs.get()

    first, overlapping, disjoint = run_on(shared, alone), run_on(other, shared), run_on(other)
    lease = services.deployment_run_claim(run_id=first.pk, owner="worker-a")
    assert set(DeploymentNodeLock.objects.values_list("node", "run")) == {
        (shared.pk, first.pk),
        (alone.pk, first.pk),
    }
    with pytest.raises(services.RunWaiting) as excinfo:
        services.deployment_run_claim(run_id=overlapping.pk, owner="worker-b")
    assert excinfo.value.reason.startswith(f"waiting for {shared.name} (held by run {first.pk} since ")
    assert excinfo.value.retry_in == 3
    # Nothing of the waiting run was taken (its other node stays free), and it is still queued.
    overlapping.refresh_from_db()
    assert (overlapping.status, overlapping.fencing_token) == (RunStatus.QUEUED, 0)
    assert not DeploymentNodeLock.objects.filter(run=overlapping).exists()
    disjoint_lease = services.deployment_run_claim(run_id=disjoint.pk, owner="worker-c")
    services.deployment_run_finish(lease=disjoint_lease, status=RunStatus.SUCCEEDED)
    services.deployment_run_finish(lease=lease, status=RunStatus.SUCCEEDED)
    services.deployment_run_claim(run_id=overlapping.pk, owner="worker-b")
    assert set(DeploymentNodeLock.objects.values_list("run", flat=True)) == {overlapping.pk}


@pytest.mark.django_db
def test_an_executor_reaped_while_stalled_stops_writes_nothing_and_frees_the_nodes(
    monkeypatch, settings, tmp_path
):
    monkeypatch.setattr(services, "enqueue_run", lambda run: None)
    settings.DEPLOYMENTS_WORK_DIR = str(tmp_path)
    node = make_online_node()
    run = services.deployment_create(node_ids=[node.pk], roles=["redis"], requested_by="u").runs.get()
    record = {
        "counter": 1,
        "uuid": "6f1c1e43-5a7e-4a51-9a39-3f0d9b0a6f00",
        "parent_uuid": "02fc0000-0001-799d-8152-00000000002d_2",  # an include_role task's uuid
        "event": "playbook_on_start",
        **dict.fromkeys(("host", "play", "task", "stdout"), ""),
        "changed": False,
        "failed": False,
        "duration": None,
        "result": {},
        "created": None,
    }

    def stalled_playbook(spec, *, on_events, should_cancel, base_dir):
        on_events([record])
        # The executor stalls past its lease; the reaper ends the run and queues the next attempt.
        DeploymentRun.objects.filter(pk=run.pk).update(lease_expires_at=run.queued_at)
        services.deployment_runs_reap()
        on_events([record | {"counter": 2}])  # refused: the token moved on
        assert should_cancel()
        return ansible.RunOutcome(status="canceled", rc=-9, host_stats={}, events_emitted=2)

    monkeypatch.setattr(execution.ansible, "run_playbook", stalled_playbook)
    assert execution.run_execute(run_id=run.pk, owner="worker-a") == RunStatus.LOST
    run.refresh_from_db()
    assert (run.status, run.events_stored) == (RunStatus.LOST, 1)
    assert str(run.events.get().parent_uuid) == "02fc0000-0001-799d-8152-00000000002d"
    assert run.orphans_cleared_at is not None
    assert not DeploymentNodeLock.objects.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.django_db(transaction=True)
def test_two_runs_on_one_node_never_overlap_and_runs_on_disjoint_nodes_do(isolated_host, workers):
    node = node_at(isolated_host, name="shared-1")
    (first, second), reasons = wait_for_all(start_together(node, node))
    assert first.status == second.status == RunStatus.SUCCEEDED, (first.status_reason, second.status_reason)
    # The second waited, visibly, and started only after the first had ended.
    assert any(reason.startswith(f"waiting for {node.name} (held by run {first.pk}") for reason in reasons), (
        reasons
    )
    assert first.finished_at <= second.started_at, (first.started_at, first.finished_at, second.started_at)
    assert not DeploymentNodeLock.objects.exists()
    same_node_seconds = (second.finished_at - first.started_at).total_seconds()

    # Two nodes (two rows to the SLM, whatever host they are): both run at once, one on each worker.
    left, right = node_at(isolated_host, name="apart-1"), node_at(isolated_host, name="apart-2")
    (one, other), reasons = wait_for_all(start_together(left, right))
    assert one.status == other.status == RunStatus.SUCCEEDED, (one.status_reason, other.status_reason)
    assert reasons == set()
    assert one.started_at < other.started_at < one.finished_at, "the runs did not run at the same time"
    assert {one.executor_pid, other.executor_pid} == {worker.pid for worker in workers}
    print(  # noqa: T201 - timing
        f"\none node: two runs in {same_node_seconds:.1f} s, one after the other; two nodes: "
        f"{(max(one.finished_at, other.finished_at) - one.started_at).total_seconds():.1f} s together"
    )
