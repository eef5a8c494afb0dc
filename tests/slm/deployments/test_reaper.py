"""The reaper: a run whose worker died (its lease expired) ends ``lost`` with the reason, its steps and
node roles are repaired, and the next attempt is queued, or the deployment fails after the last one. The
lost run's nodes stay locked until what the dead worker left running is killed on its host.

The last test does it for real: a Celery worker process is killed with ``kill -9`` in the middle of a
deploy of the ``redis`` role onto the isolated test host; the reaper ends the run ``lost`` within 60 s,
kills the orphaned Ansible processes, and a fresh worker deploys the retry to success.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from slm_project.deployments import execution, services, tasks
from slm_project.deployments.choices import RunStatus, StepStatus
from slm_project.deployments.constants import LEASE_SECONDS, ORPHAN_CLEANUP_GRACE_SECONDS
from slm_project.deployments.models import DeploymentEvent, DeploymentNodeLock, DeploymentRun
from slm_project.deployments.runners import ansible
from slm_project.fleet.choices import NodeRoleStatus
from slm_project.fleet.models import NodeRole
from tests.slm.deployments.factories import make_online_node
from tests.slm.deployments.worker_processes import WorkerProcess, kill_processes_under, node_at, wait_for_end

LOST_WITHIN_SECONDS = 60


@pytest.fixture
def sent(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(services, "enqueue_run", lambda run: sent.append(str(run.pk)))
    return sent


def started_run(*, owner: str = "worker-a", host: str = "elsewhere", work_dir: str = "/nonexistent/run"):
    """A run claimed by an executor that started its first step (its node role is ``deploying``)."""
    node = make_online_node()
    deployment = services.deployment_create(node_ids=[node.pk], roles=["redis"], requested_by="user:ops")
    run = deployment.runs.get()
    lease = services.deployment_run_claim(run_id=run.pk, owner=owner, host=host, pid=4242, work_dir=work_dir)
    run.refresh_from_db()
    services.deployment_step_start(lease=lease, steps=run.steps, index=0)
    assert NodeRole.objects.get(node=node, role__name="redis").status == NodeRoleStatus.DEPLOYING
    return node, deployment, run, lease


def expire(run: DeploymentRun) -> None:
    DeploymentRun.objects.filter(pk=run.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


@pytest.mark.django_db
def test_a_run_whose_lease_expired_is_lost_repaired_and_retried_once_its_nodes_are_free(sent):
    node, deployment, run, stale = started_run()
    assert services.deployment_runs_reap() == []  # the lease is live: nothing to do
    expire(run)
    (reaped,) = services.deployment_runs_reap()
    assert reaped.pk == run.pk
    run.refresh_from_db()
    assert run.status == RunStatus.LOST
    assert run.status_reason.startswith(
        "lost: its executor worker-a on elsewhere (pid 4242) stopped renewing the lease, which expired at "
    )
    assert run.status_reason.endswith("the worker was probably killed; attempt 2 of 3 is queued")
    assert (run.fencing_token, run.lease_expires_at) == (stale.token + 1, None)
    assert [step["status"] for step in run.steps] == [StepStatus.LOST]
    # The node role is no longer "deploying"; nothing says it was deployed.
    assert NodeRole.objects.get(node=node, role__name="redis").status == NodeRoleStatus.ASSIGNED
    # The dead executor, were it only stalled, can write nothing more.
    with pytest.raises(services.LeaseLost):
        services.deployment_run_renew(lease=stale)

    retry = deployment.runs.get(attempt=2)
    assert (retry.status, sent) == (RunStatus.QUEUED, [str(run.pk), str(retry.pk)])
    deployment.refresh_from_db()
    assert deployment.status == RunStatus.QUEUED
    # The lost run holds its node until its host has killed what the dead worker left running.
    assert DeploymentNodeLock.objects.get(node=node).run_id == run.pk
    with pytest.raises(services.RunWaiting) as excinfo:
        services.deployment_run_claim(run_id=retry.pk, owner="worker-b")
    assert f"waiting for {node.name} (held by run {run.pk} since " in excinfo.value.reason
    retry.refresh_from_db()
    assert retry.status_reason.startswith(f"waiting for {node.name}")

    services.deployment_run_orphans_cleared(run_id=run.pk)
    assert not DeploymentNodeLock.objects.exists()
    assert sent[-1] == str(retry.pk)  # the waiting attempt is sent again at once
    lease = services.deployment_run_claim(run_id=retry.pk, owner="worker-b")
    assert DeploymentNodeLock.objects.get(node=node).run_id == retry.pk
    services.deployment_run_finish(lease=lease, status=RunStatus.SUCCEEDED)
    assert not DeploymentNodeLock.objects.exists()


@pytest.mark.django_db
def test_after_the_last_attempt_the_deployment_fails_with_the_reason(sent, monkeypatch):
    monkeypatch.setattr(services, "RUN_MAX_ATTEMPTS", 1)
    _, deployment, run, _ = started_run()
    expire(run)
    services.deployment_runs_reap()
    run.refresh_from_db()
    assert run.status == RunStatus.LOST
    assert run.status_reason.endswith("no attempt left (1 of 1): the deployment failed")
    deployment.refresh_from_db()
    assert deployment.status == RunStatus.FAILED
    assert deployment.runs.count() == 1


@pytest.mark.django_db
def test_a_lost_run_with_a_cancel_requested_is_not_retried(sent):
    _, deployment, run, _ = started_run()
    services.deployment_cancel(deployment=deployment, actor="user:ops")
    expire(run)
    services.deployment_runs_reap()
    run.refresh_from_db()
    assert run.status_reason.endswith("not retried (a cancel was requested)")
    assert deployment.runs.count() == 1


@pytest.mark.django_db
def test_the_nodes_of_a_host_that_never_cleans_up_are_freed_after_the_grace(sent):
    node, _, run, _ = started_run()
    expire(run)
    services.deployment_runs_reap()
    assert services.deployment_node_locks_expire() == 0
    later = timezone.now() + timedelta(seconds=ORPHAN_CLEANUP_GRACE_SECONDS + 1)
    assert services.deployment_node_locks_expire(now=later) == 1
    assert not DeploymentNodeLock.objects.filter(node=node).exists()


def spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.mark.django_db
def test_orphans_of_a_lost_run_on_this_host_are_killed_and_its_files_removed(sent, tmp_path):
    run_dir = tmp_path / "abc123"
    (run_dir / "autobot-run-x" / "keys").mkdir(parents=True)
    (run_dir / "autobot-run-x" / "keys" / "id").write_text("key material")
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    # What a killed worker leaves: ansible-playbook leading its own process group, a fork of it, and an
    # SSH control master that left the group; plus an unrelated process that must survive.
    leader = spawn([*sleeper, f"{run_dir}/autobot-run-x/inventory/hosts.json"])
    master = spawn([*sleeper, f"ControlPath={run_dir}/autobot-run-x/cp/%C"])
    bystander = spawn(sleeper)
    try:
        _, _, run, lease = started_run(host=socket.gethostname(), work_dir=str(run_dir))
        services.deployment_run_process_group_record(lease=lease, pgid=leader.pid)
        expire(run)
        services.deployment_runs_reap()
        # A lost run of another host is not this host's to clean.
        started_run(host="elsewhere", work_dir=str(tmp_path / "other"))
        assert execution.orphans_clear(host=socket.gethostname()) == 1
        assert leader.wait(timeout=10) == -9
        assert master.wait(timeout=10) == -9
        assert bystander.poll() is None
        assert not run_dir.exists()
        run.refresh_from_db()
        assert run.orphans_cleared_at is not None
        assert not DeploymentNodeLock.objects.filter(run=run).exists()
        assert execution.orphans_clear(host=socket.gethostname()) == 0  # done once
    finally:
        for process in (leader, master, bystander):
            process.kill()
            process.wait(timeout=10)


@pytest.mark.django_db
def test_a_recycled_process_group_id_is_not_killed(sent, tmp_path):
    unrelated = spawn([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        _, _, run, lease = started_run(host=socket.gethostname(), work_dir=str(tmp_path / "run"))
        services.deployment_run_process_group_record(lease=lease, pgid=unrelated.pid)
        expire(run)
        services.deployment_runs_reap()
        assert execution.orphans_clear(host=socket.gethostname()) == 1
        assert unrelated.poll() is None  # its command line does not name the run's directory
    finally:
        unrelated.kill()
        unrelated.wait(timeout=10)


# --------------------------------------------------------------------------------------------------
# For real: kill -9 of a worker in the middle of a deploy


@pytest.mark.django_db(transaction=True)
def test_kill_9_of_the_worker_mid_run_ends_the_run_lost_and_a_fresh_worker_deploys_the_retry(
    isolated_host, tmp_path
):
    work_dir = Path(tempfile.mkdtemp(prefix="abk-"))  # short: SSH control socket paths live inside
    doomed = WorkerProcess("doomed", tmp_path, work_dir=work_dir)
    fresh = WorkerProcess("fresh", tmp_path, work_dir=work_dir)
    try:
        node = node_at(isolated_host, name="reaped-1")
        doomed.start()
        deployment = services.deployment_create(
            node_ids=[node.pk],
            roles=["redis"],
            requested_by="user:ops",
            extra_vars={"redis_maxmemory": "48mb"},  # a change: the restart makes the run longer
        )
        run = deployment.runs.get()
        # Mid-run: tasks are running and the executor has recorded ansible-playbook's process group.
        deadline = time.monotonic() + 60
        while not (
            DeploymentRun.objects.filter(pk=run.pk, ansible_pgid__isnull=False).exists()
            and DeploymentEvent.objects.filter(run=run, event="runner_on_start").exists()
        ):
            assert time.monotonic() < deadline, f"the run never got going:\n{doomed.log_tail()}"
            time.sleep(0.05)
        run.refresh_from_db()
        assert run.status == RunStatus.RUNNING
        assert (run.executor_host, run.executor_pid) == (socket.gethostname(), doomed.pid)
        run_dir = Path(run.work_dir)
        assert run_dir.parent == work_dir

        doomed.kill()
        killed_at = time.monotonic()
        # ansible-playbook runs in a session of its own with SIGHUP ignored: it outlives the worker.
        orphans = ansible.processes_using(run_dir)
        fresh.start()

        # The reaper, as beat runs it every 15 s (here every second, to time the lease itself).
        while True:
            tasks.reap_runs()
            run.refresh_from_db()
            if run.status != RunStatus.RUNNING:
                break
            assert time.monotonic() - killed_at < LOST_WITHIN_SECONDS, "the run was not reaped in time"
            time.sleep(1)
        lost_after = time.monotonic() - killed_at
        assert run.status == RunStatus.LOST
        assert lost_after <= LEASE_SECONDS + 2
        where = f"its executor {run.lease_owner} on {socket.gethostname()} (pid {doomed.pid})"
        assert where in run.status_reason
        assert run.status_reason.endswith("attempt 2 of 3 is queued")
        # The reaper of this host killed what the dead worker left and removed the key material.
        assert run.orphans_cleared_at is not None
        assert ansible.processes_using(run_dir) == []
        assert not run_dir.exists()

        retry = wait_for_end(deployment.runs.get(attempt=2))
        assert retry.status == RunStatus.SUCCEEDED, retry.status_reason
        assert retry.executor_pid == fresh.pid
        events = list(DeploymentEvent.objects.filter(run=retry).order_by("counter"))
        assert retry.events_stored == retry.events_emitted == len(events) > 10
        assert events[-1].event == "playbook_on_stats"
        assert retry.started_at >= run.finished_at
        deployment.refresh_from_db()
        assert deployment.status == RunStatus.SUCCEEDED
        assert NodeRole.objects.get(node=node, role__name="redis").status == NodeRoleStatus.ACTIVE
        print(  # noqa: T201 - timing
            f"\nkill -9 -> lost in {lost_after:.1f} s ({len(orphans)} orphaned processes killed), "
            f"retry ran {(retry.finished_at - retry.started_at).total_seconds():.1f} s"
        )
    finally:
        if doomed.process is not None and doomed.process.poll() is None:
            doomed.kill()
        fresh.stop()
        leftovers = kill_processes_under(work_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
    assert leftovers == [], "processes of the killed worker outlived the test"
