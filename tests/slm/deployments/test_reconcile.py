"""The reconciler: drift between what a node should run and what it runs becomes one event (not one per
pass), is resolved when it goes away, and is deployed away where the policy says so; check-mode runs are
scheduled once per interval, run ``--check --diff`` and keep their per-host diffs (for real against the
isolated host at the end)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from slm_project.deployments import actions, reconcile, services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.models import Deployment, DeploymentAction, DeploymentRun, RoleDrift, RunDiff
from slm_project.deployments.runners import ansible
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import EventKind
from slm_project.fleet.models import NodeEvent, NodeRole, Role, Service
from tests.slm.deployments import test_deploy_e2e
from tests.slm.deployments.factories import make_online_node
from tests.slm.deployments.test_deploy_e2e import deploy, wait_for_end

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


def finish(deployment: Deployment, status: str = RunStatus.SUCCEEDED, at=None) -> Deployment:
    """End the deployment's runs as an executor would have (no Ansible here)."""
    DeploymentRun.objects.filter(deployment=deployment).update(
        status=status, finished_at=at or timezone.now()
    )
    Deployment.objects.filter(pk=deployment.pk).update(status=status)
    return deployment


def deployed(node, roles=("redis",), at=None) -> Deployment:
    deployment = services.deployment_create(node_ids=[node.pk], roles=list(roles), requested_by="user:ops")
    return finish(deployment, at=at)


def drift_events(node, kind=EventKind.ROLE_DRIFT):
    return list(NodeEvent.objects.filter(node=node, kind=kind).order_by("id"))


# --------------------------------------------------------------------------------------------------
# Drift


@pytest.mark.django_db
def test_a_version_drift_is_announced_once_and_resolved_when_it_goes_away(sent):
    node = make_online_node()
    deployed(node)
    NodeRole.objects.filter(node=node, role__name="redis").update(desired_version="7.2", actual_version="7.0")

    for _ in range(3):  # every five minutes: still one drift, one event
        reconcile.drift_reconcile()
    drift = RoleDrift.objects.get(node=node)
    assert drift.resolved_at is None
    assert drift.details == {"version": {"desired": "7.2", "actual": "7.0"}}
    [event] = drift_events(node)
    assert event.data["drift"] == drift.details
    assert "version 7.0, wanted 7.2" in event.message
    assert event.needs_attention  # the policy does not deploy: an operator should know
    assert drift.event == event

    NodeRole.objects.filter(node=node, role__name="redis").update(actual_version="7.2")
    result = reconcile.drift_reconcile()
    assert result.resolved == [f"{node.name}/redis"]
    drift.refresh_from_db()
    event.refresh_from_db()
    assert drift.resolved_at is not None
    assert (event.acknowledged_by, event.acknowledged_at is not None) == ("reconciler", True)
    assert len(drift_events(node, EventKind.ROLE_DRIFT_RESOLVED)) == 1
    reconcile.drift_reconcile()
    assert len(drift_events(node)) == 1
    assert len(drift_events(node, EventKind.ROLE_DRIFT_RESOLVED)) == 1
    assert not Deployment.objects.filter(requested_by="reconciler").exists()


@pytest.mark.django_db
def test_a_drift_that_changes_is_announced_again_and_the_old_event_closed(sent):
    node = make_online_node()
    deployed(node)
    NodeRole.objects.filter(node=node, role__name="redis").update(desired_version="7.2", actual_version="7.0")
    reconcile.drift_reconcile()
    NodeRole.objects.filter(node=node, role__name="redis").update(actual_version="7.1")
    result = reconcile.drift_reconcile()
    assert result.changed == [f"{node.name}/redis"]
    first, second = drift_events(node)
    first.refresh_from_db()
    assert first.acknowledged_by == "reconciler"
    assert second.data["drift"]["version"]["actual"] == "7.1"
    assert RoleDrift.objects.filter(node=node).count() == 1


@pytest.mark.django_db
def test_where_the_policy_says_so_the_drifted_role_is_deployed_once(sent, settings):
    settings.DEPLOYMENTS_AUTO_REMEDIATE_DRIFT = False
    settings.DEPLOYMENTS_AUTO_REMEDIATE_DRIFT_ROLES = {"redis": True}
    node = make_online_node()
    deployed(node)
    NodeRole.objects.filter(node=node, role__name="redis").update(desired_version="7.2", actual_version="7.0")

    result = reconcile.drift_reconcile()
    [fix] = Deployment.objects.filter(requested_by="reconciler")
    assert result.deployments == [str(fix.pk)]
    assert (fix.roles, list(fix.nodes.all())) == (["redis"], [node])
    assert fix.idempotency_key.startswith("drift:")
    assert RoleDrift.objects.get(node=node).deployment == fix
    assert not drift_events(node)[0].needs_attention  # being fixed, nobody needs to act
    assert len(sent) == 2

    # While the fix runs the node is left alone; when it failed, the same drift is not deployed again,
    # and an operator is told, once.
    reconcile.drift_reconcile()
    assert len(drift_events(node)) == 1
    finish(fix, RunStatus.FAILED)
    reconcile.drift_reconcile()
    reconcile.drift_reconcile()
    assert Deployment.objects.filter(requested_by="reconciler").count() == 1
    announced, fix_failed = drift_events(node)
    assert not announced.needs_attention
    assert fix_failed.needs_attention
    assert "still drifts after its deployment ended failed" in fix_failed.message
    assert RoleDrift.objects.get(node=node).event == fix_failed
    # The key is derived from node, role, desired version and the drift: recomputing it finds the fix.
    drift = RoleDrift.objects.get(node=node)
    assert reconcile.drift_idempotency_key(drift=drift, desired_version="7.2") == fix.idempotency_key


@pytest.mark.django_db
def test_other_kinds_of_drift_and_nodes_that_are_not_judged(sent, settings):
    settings.DEPLOYMENTS_AUTO_REMEDIATE_DRIFT = True
    node = make_online_node()
    fleet_services.node_roles_set(node=node, roles=["redis"])  # assigned, never deployed
    llm = Role.objects.get(name="llm")
    Service.objects.create(node=node, name="ollama", role=llm, state="running")  # runs without the role
    agent_node = make_online_node()
    deployed(agent_node, roles=("slm-agent",))
    agent_node.last_heartbeat_at = timezone.now()
    agent_node.save(update_fields=["last_heartbeat_at"])  # its agent reports, but not autobot-agent
    resting = make_online_node()
    NodeRole.objects.create(node=resting, role=llm, desired_version="1", actual_version="0")
    fleet_services.node_drain(node=resting, actor="user:ops")

    reconcile.drift_reconcile()
    by_role = {drift.role.name: drift.details for drift in RoleDrift.objects.filter(node=node)}
    assert by_role == {"redis": {"not_deployed": True}, "llm": {"unexpected": ["ollama"]}}
    assert RoleDrift.objects.get(node=agent_node).details == {"missing_services": ["autobot-agent"]}
    assert not RoleDrift.objects.filter(node=resting).exists()  # draining: an operator's state
    # Policy on for every role: the never deployed role is deployed; a role to remove is not "deployed".
    assert sorted(tuple(d.roles) for d in Deployment.objects.filter(requested_by="reconciler")) == [
        ("redis",),
        ("slm-agent",),
    ]
    unexpected = RoleDrift.objects.get(node=node, role=llm)
    assert unexpected.deployment is None
    assert drift_events(node)[0].needs_attention or drift_events(node)[1].needs_attention


# --------------------------------------------------------------------------------------------------
# Check-mode runs: scheduling, what the executor runs, the diffs kept


@pytest.mark.django_db
def test_check_runs_are_scheduled_once_per_interval_for_deployed_roles(sent, settings):
    settings.DEPLOYMENTS_CHECK_RUN_INTERVAL_SECONDS = 3600
    node = make_online_node()
    deployed(node)
    bare = make_online_node()  # no role deployed: nothing to check
    offline = make_online_node()
    deployed(offline)
    fleet_services.node_mark_error(node=offline, reason="down", actor="test")
    now = timezone.now()

    [check] = reconcile.check_runs_schedule(now=now)
    assert check.action.kind == DeploymentAction.Kind.CHECK
    assert (check.roles, list(check.nodes.all()), check.requested_by) == (["redis"], [node], "reconciler")
    assert reconcile.check_runs_schedule(now=now + timedelta(seconds=1)) == []  # same interval
    # The next interval: not while this one is still queued on the node, then a new one.
    assert reconcile.check_runs_schedule(now=now + timedelta(hours=1)) == []
    finish(check)
    [again] = reconcile.check_runs_schedule(now=now + timedelta(hours=1))
    assert again.pk != check.pk
    assert not Deployment.objects.filter(nodes=bare).exists()


@pytest.mark.django_db
def test_a_check_run_that_would_change_a_role_is_drift_until_a_deploy_after_it(sent):
    node = make_online_node()
    deployed(node, at=timezone.now() - timedelta(hours=2))
    check, _ = actions.action_deployment_create(
        node=node, roles=["redis"], kind=DeploymentAction.Kind.CHECK, requested_by="t", idempotency_key="c1"
    )
    finish(check, at=timezone.now() - timedelta(hours=1))
    run = check.runs.get()
    RunDiff.objects.create(
        run=run, counter=7, host=node.name, role="redis", task="Redis is configured", changed=True
    )
    RunDiff.objects.create(run=run, counter=9, host=node.name, role="redis", task="Unchanged", changed=False)

    reconcile.drift_reconcile()
    drift = RoleDrift.objects.get(node=node)
    assert drift.details == {"check": {"run": str(run.pk), "tasks": ["Redis is configured"]}}
    deployed(node)  # a deploy after the check run puts the role back
    assert reconcile.drift_reconcile().resolved == [f"{node.name}/redis"]


def spec(**overrides) -> ansible.PlaybookRun:
    values = {
        "ident": "r",
        "playbook": "deploy.yml",
        "hosts": (),
        "private_key": b"k",
        "ansible_dir": services.ansible_dir(),
        "timeout_seconds": 60,
        "extra_vars": {"redis_maxmemory": "64mb"},
    }
    return ansible.PlaybookRun(**(values | overrides))


@pytest.mark.django_db
def test_the_executor_runs_a_check_deployment_with_check_and_diff(sent):
    node = make_online_node()
    deployed(node)
    check, _ = actions.action_deployment_create(
        node=node, roles=["redis"], kind=DeploymentAction.Kind.CHECK, requested_by="t", idempotency_key="c1"
    )
    changed = actions.playbook_run_with_action(spec(), deployment=check)
    assert (changed.playbook, changed.check, changed.diff, changed.cmdline()) == (
        "deploy.yml",
        True,
        True,
        "--check --diff",
    )
    plain = actions.playbook_run_with_action(spec(), deployment=Deployment.objects.exclude(pk=check.pk).get())
    assert (plain.check, plain.diff, plain.cmdline()) == (False, False, "")


def file_diff_event(counter: int, diff) -> dict:
    return {
        "event": "runner_on_file_diff",
        "counter": counter,
        "uuid": f"00000000-0000-0000-0000-{counter:012d}",
        "event_data": {"host": "n1", "task": "Redis is configured", "role": "redis", "diff": diff},
    }


def test_event_records_carry_diffs_only_in_diff_runs_and_secrets_stay_hidden():
    template = file_diff_event(
        3,
        [
            {
                "before": "port 6379\nrequirepass s3cret-password\n",
                "after": "port 6380\nrequirepass s3cret-password\n",
                "before_header": "/etc/redis/redis.conf",
                "after_header": "/var/work/autobot-run-abc/tmp/ansible-local-1/source",
            }
        ],
    )
    state = file_diff_event(
        4, {"before": {"path": "/d", "state": "absent"}, "after": {"path": "/d", "state": "directory"}}
    )
    unchanged = file_diff_event(
        5, {"before": {"path": "/d", "state": "directory"}, "after": {"path": "/d", "state": "directory"}}
    )
    hidden = file_diff_event(6, None)  # a no_log task: Ansible hides its diff, ansible-runner its result
    censored = {**hidden, "event": "runner_on_ok", "counter": 7, "stdout": "changed: [n1]"}
    censored["event_data"] = {**hidden["event_data"], "res": {"censored": "hidden"}}
    censored_ok = {**censored, "counter": 8, "stdout": "ok: [n1]"}

    batches: list[list[dict]] = []
    pump = ansible.EventPump(batches.append, ansible.Redactor(["s3cret-password"]), diffs=True)
    for event in (template, state, unchanged, hidden, censored, censored_ok):
        pump(event)
    pump.flush()
    first, second, third, fourth, fifth, sixth = batches[0]
    assert first["diff"].startswith("--- /etc/redis/redis.conf\n+++ after (generated)\n")
    assert "-port 6379\n+port 6380\n" in first["diff"]
    assert "s3cret-password" not in json.dumps(batches)
    assert "********" in first["diff"]
    assert first["role"] == "redis"
    assert "-state: absent\n+state: directory\n" in second["diff"]
    assert "diff" not in third  # no change, no diff
    assert "diff" not in fourth  # hidden: whether it changes is told by the task's result line
    assert fifth["diff"] == ansible.HIDDEN_DIFF
    assert "diff" not in sixth

    plain: list[list[dict]] = []
    pump = ansible.EventPump(plain.extend, ansible.Redactor([]))
    pump(template)
    pump.flush()
    assert "diff" not in plain[0]
    assert "role" not in plain[0]


@pytest.mark.django_db
def test_diffs_are_stored_under_the_runs_lease_only(sent):
    node = make_online_node()
    deployed(node)
    check, _ = actions.action_deployment_create(
        node=node, roles=["redis"], kind=DeploymentAction.Kind.CHECK, requested_by="t", idempotency_key="c1"
    )
    run = check.runs.get()
    lease = services.deployment_run_claim(run_id=run.pk, owner="w1")
    record = {
        "counter": 5,
        "host": node.name,
        "task": "t",
        "changed": True,
        "diff": "-a\n+b\n",
        "role": "redis",
    }
    assert actions.run_diffs_store(lease=lease, records=[record, {"counter": 6, "host": node.name}]) == 1
    assert list(RunDiff.objects.values_list("run", "counter", "diff")) == [(run.pk, 5, "-a\n+b\n")]
    stale = services.Lease(run_id=run.pk, owner="w0", token=lease.token - 1)
    with pytest.raises(services.LeaseLost):
        actions.run_diffs_store(lease=stale, records=[record | {"counter": 8}])
    assert RunDiff.objects.count() == 1


# --------------------------------------------------------------------------------------------------
# For real: a check-mode run against the isolated host

e2e = pytest.mark.django_db(transaction=True)


@e2e
def test_a_check_run_stores_the_diff_of_a_file_changed_on_the_host_and_none_when_clean(
    isolated_host, enrolled_node, run_work_dir
):
    node = enrolled_node
    assert deploy(node).status == RunStatus.SUCCEEDED

    def check(key: str) -> DeploymentRun:
        deployment, _ = actions.action_deployment_create(
            node=node,
            roles=["redis"],
            kind=DeploymentAction.Kind.CHECK,
            requested_by="t",
            idempotency_key=key,
        )
        return wait_for_end(deployment.runs.get())

    clean = check("clean")
    assert clean.status == RunStatus.SUCCEEDED, clean.status_reason
    assert clean.host_stats[node.name]["changed"] == 0
    assert not RunDiff.objects.filter(run=clean).exists()

    definition = "/etc/autobot/services/redis-server.conf"
    isolated_host.run(["sh", "-c", f"echo 'ARGS=\"/etc/redis/other.conf\"' >> {definition}"])
    isolated_host.run(
        ["sed", "-i", "s/^maxmemory-policy .*/maxmemory-policy allkeys-lru/", "/etc/redis/redis.conf"]
    )
    edited = isolated_host.run(["cat", definition]).stdout
    pid = isolated_host.run(["cat", "/run/redis-server.pid"]).stdout

    drifted = check("drifted")
    assert drifted.status == RunStatus.SUCCEEDED, drifted.status_reason
    diffs = {diff.task: diff for diff in RunDiff.objects.filter(run=drifted)}
    service = diffs["The redis-server service is defined (direct)"]
    assert (service.host, service.role, service.changed) == (node.name, "redis", True)
    assert service.diff.startswith(f"--- {definition}\n+++ after (generated)\n")
    assert '-ARGS="/etc/redis/other.conf"' in service.diff
    # The configuration holds the password: it shows as changed, its content does not.
    config = diffs["Redis is configured"]
    assert (config.changed, config.diff) == (True, ansible.HIDDEN_DIFF)
    password = services.vault_variable(role="redis", variable="redis_password")
    assert password not in json.dumps([diff.diff for diff in diffs.values()])
    # Check mode changed nothing on the host.
    assert isolated_host.run(["cat", definition]).stdout == edited
    assert isolated_host.run(["cat", "/run/redis-server.pid"]).stdout == pid

    reconcile.drift_reconcile()
    drift = RoleDrift.objects.get(node=node, role__name="redis", resolved_at__isnull=True)
    assert set(drift.details["check"]["tasks"]) >= {"Redis is configured", service.task}

    # Deployed again, the host is back to what the role says; the next check run finds nothing.
    assert deploy(node).status == RunStatus.SUCCEEDED
    assert not RunDiff.objects.filter(run=check("clean-again")).exists()
    reconcile.drift_reconcile()
    drift.refresh_from_db()
    assert drift.resolved_at is not None
    assert NodeEvent.objects.filter(node=node, kind=EventKind.ROLE_DRIFT).count() == 1
