"""Deployment requests and the executor's claim: bad input refused with a clear error, a run started
once, and an executor that lost its run unable to write."""

import threading

import pytest
from django.db import connection, transaction
from rest_framework.exceptions import NotFound, ValidationError

from service_kit.errors import Conflict
from slm_project.deployments import services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.models import Deployment, DeploymentEvent, DeploymentRun
from slm_project.fleet import services as fleet_services
from slm_project.fleet.models import NodeRole
from tests.slm.deployments.factories import make_online_node

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sent(monkeypatch):
    """Requests enqueue on commit; here nothing is sent anywhere (sent ids are recorded)."""
    sent = []
    monkeypatch.setattr(services, "enqueue_run", lambda run: sent.append(str(run.pk)))
    return sent


def create(node, **overrides):
    values = {"node_ids": [node.pk], "roles": ["redis"], "requested_by": "user:ops"} | overrides
    return services.deployment_create(**values)


def test_a_deployment_is_queued_with_one_run_and_the_roles_assigned(sent):
    node = make_online_node()
    deployment = create(node, roles=["redis", "slm-agent"], extra_vars={"redis_maxmemory": "64mb"})
    assert deployment.status == RunStatus.QUEUED
    assert deployment.roles == ["slm-agent", "redis"]  # dependency order from the registry
    run = deployment.runs.get()
    assert (run.status, run.attempt, run.fencing_token) == (RunStatus.QUEUED, 1, 0)
    assert sent == [str(run.pk)]  # the task gets the run id, nothing else
    assert set(NodeRole.objects.filter(node=node).values_list("role__name", flat=True)) == {
        "redis",
        "slm-agent",
    }


def test_the_same_idempotency_key_returns_the_same_deployment():
    node = make_online_node()
    first = create(node, idempotency_key="req-1")
    again = create(node, idempotency_key="req-1", roles=["slm-agent"])
    assert again.pk == first.pk
    assert Deployment.objects.count() == 1
    assert DeploymentRun.objects.count() == 1


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        (["nosuchrole"], "Unknown roles: nosuchrole"),
        (["../../etc/passwd"], "is not a role name"),
        (["redis/../common"], "is not a role name"),
        ([], "Name at least one role"),
    ],
)
def test_bad_roles_are_refused(roles, message):
    node = make_online_node()
    with pytest.raises(ValidationError) as excinfo:
        create(node, roles=roles)
    assert message in str(excinfo.value.detail["roles"])
    assert not Deployment.objects.exists()


def test_a_role_whose_ansible_role_does_not_exist_is_refused(monkeypatch):
    from dataclasses import replace

    from slm_project.fleet import registry

    # Every registry role has its Ansible role now; one that names a missing directory stands in.
    monkeypatch.setitem(registry.ROLES, "llm", replace(registry.ROLES["llm"], ansible_role="not_written"))
    node = make_online_node()
    with pytest.raises(ValidationError) as excinfo:
        create(node, roles=["llm"])
    assert "No Ansible role exists yet for: llm" in str(excinfo.value.detail["roles"])
    assert not Deployment.objects.exists()


def test_an_unknown_node_is_refused():
    with pytest.raises(ValidationError) as excinfo:
        services.deployment_create(
            node_ids=["00000000-0000-0000-0000-000000000000"], roles=["redis"], requested_by="user:ops"
        )
    assert "Unknown nodes: 00000000-0000-0000-0000-000000000000" in str(excinfo.value.detail["nodes"])


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({"ansible_ssh_common_args": "-o ProxyCommand=sh"}, "'ansible_ssh_common_args' is not a variable"),
        ({"redis_password": "mine"}, "'redis_password' is not a variable"),  # vault-only
        ({"slm_agent_interval_seconds": 5}, "'slm_agent_interval_seconds' is not a variable"),  # other role
        ({"redis_maxmemory": {"nested": 1}}, "a plain value"),
    ],
)
def test_extra_vars_outside_the_roles_allowlist_are_refused(extra_vars, message):
    node = make_online_node()
    with pytest.raises(ValidationError) as excinfo:
        create(node, extra_vars=extra_vars)
    assert message in str(excinfo.value.detail["extra_vars"])


def test_a_decommissioned_node_takes_no_deployment():
    node = make_online_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    with pytest.raises(Conflict) as excinfo:
        create(node)
    assert f"{node.name} is decommissioned" in str(excinfo.value.detail)


def test_a_run_is_started_once():
    run = create(make_online_node()).runs.get()
    lease = services.deployment_run_claim(run_id=run.pk, owner="worker-a")
    assert lease.token == 1
    with pytest.raises(services.RunNotClaimable) as excinfo:
        services.deployment_run_claim(run_id=run.pk, owner="worker-b")
    assert "is running, held by worker-a: a run is started only once" in str(excinfo.value.detail)
    run.refresh_from_db()
    assert (run.status, run.lease_owner, run.fencing_token) == (RunStatus.RUNNING, "worker-a", 1)
    with pytest.raises(NotFound):
        services.deployment_run_claim(run_id="00000000-0000-0000-0000-000000000000", owner="worker-b")


@pytest.mark.django_db(transaction=True)
def test_a_run_locked_by_another_transaction_is_refused_for_what_it_is():
    """A running run's row is locked now and then (a lease renewal, a duplicate delivery's own claim):
    the refusal says the run has started, not that someone is claiming it."""
    run = create(make_online_node()).runs.get()
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        try:
            with transaction.atomic():
                DeploymentRun.objects.select_for_update().get(pk=run.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    def refusal_while_locked() -> str:
        locked.clear()
        release.clear()
        holder = threading.Thread(target=hold_the_row)
        holder.start()
        try:
            assert locked.wait(10)
            with pytest.raises(services.RunNotClaimable) as excinfo:
                services.deployment_run_claim(run_id=run.pk, owner="worker-b")
            return str(excinfo.value.detail)
        finally:
            release.set()
            holder.join()

    if connection.vendor == "postgresql":  # SQLite has no row locks: the claim would simply win
        assert "is being claimed by another worker" in refusal_while_locked()
    services.deployment_run_claim(run_id=run.pk, owner="worker-a")
    assert "is running, held by worker-a: a run is started only once" in refusal_while_locked()


def test_an_executor_that_lost_its_run_cannot_write():
    run = create(make_online_node()).runs.get()
    stale = services.deployment_run_claim(run_id=run.pk, owner="worker-a")
    # Another owner took the run over (as the reaper's retry does): the token moved on.
    DeploymentRun.objects.filter(pk=run.pk).update(fencing_token=stale.token + 1, lease_owner="worker-b")
    record = {
        "counter": 1,
        "uuid": "6f1c1e43-5a7e-4a51-9a39-3f0d9b0a6f00",
        "parent_uuid": None,
        "event": "playbook_on_start",
        "host": "",
        "play": "",
        "task": "",
        "changed": False,
        "failed": False,
        "duration": None,
        "stdout": "",
        "result": {},
        "created": None,
    }
    with pytest.raises(services.LeaseLost):
        services.deployment_events_store(lease=stale, records=[record], emitted=1)
    with pytest.raises(services.LeaseLost):
        services.deployment_run_finish(lease=stale, status=RunStatus.SUCCEEDED)
    assert not DeploymentEvent.objects.exists()
    run.refresh_from_db()
    assert (run.status, run.lease_owner, run.events_stored) == (RunStatus.RUNNING, "worker-b", 0)


def test_canceling_a_queued_run_ends_it_and_a_finished_run_cannot_be_canceled():
    deployment = create(make_online_node())
    run = services.deployment_cancel(deployment=deployment, actor="user:ops")
    assert (run.status, run.cancel_requested_by) == (RunStatus.CANCELED, "user:ops")
    deployment.refresh_from_db()
    assert deployment.status == RunStatus.CANCELED
    with pytest.raises(services.RunNotClaimable):
        services.deployment_run_claim(run_id=run.pk, owner="worker-a")
    with pytest.raises(Conflict):
        services.deployment_cancel(deployment=deployment, actor="user:ops")
