"""Writes of deployments: requests (create, cancel) and the executor's fenced writes on a run.

A run is executed by one worker at a time. ``deployment_run_claim`` hands the worker a ``Lease``: the
run row was locked with ``SELECT … FOR UPDATE SKIP LOCKED`` (a second worker skips it at once) and
moved from ``queued`` to ``running`` with a new fencing token. Every later write of that worker
(events, lease renewal, the end of the run) is an ``UPDATE … WHERE fencing_token = <its token> AND
status = 'running'``; when it matches no row the worker has lost the run (``LeaseLost``) and stops.

Two runs that touch the same node never run at once: the claim also takes a ``DeploymentNodeLock`` for
each of the run's nodes (the node is the lock's primary key) and asks the maintenance policy
(``policy.may_start``). A run that may not start yet stays ``queued`` with the reason on its row
(``RunWaiting``; the task sends it again later). The reaper (``deployment_runs_reap``, on beat) ends a run
whose lease expired as ``lost`` and makes the next attempt, or fails the deployment when none are left.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import NotFound, ValidationError

from service_kit.errors import Conflict
from slm_project.deployments import policy, strategies
from slm_project.deployments.choices import FINISHED, RunStatus, StepStatus, Strategy
from slm_project.deployments.constants import (
    EXTRA_VAR_MAX_CHARS,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    LEASE_SECONDS,
    NODE_BUSY_RETRY_SECONDS,
    ORPHAN_CLEANUP_GRACE_SECONDS,
    POLICY_RETRY_MAX_SECONDS,
    RUN_MAX_ATTEMPTS,
    RUN_TIMEOUT_SECONDS,
)
from slm_project.deployments.models import Deployment, DeploymentEvent, DeploymentNodeLock, DeploymentRun
from slm_project.fleet.choices import NodeRoleStatus, NodeState
from slm_project.fleet.models import Node, NodeRole
from slm_project.fleet.registry import ROLES, dependency_order
from slm_project.fleet.services import node_roles_set
from slm_project.security.choices import CredentialKind
from slm_project.security.models import Credential
from slm_project.security.services import credential_reveal, credential_store

logger = logging.getLogger(__name__)

EXECUTE_TASK = "deployments.execute_run"
EXECUTE_QUEUE = "deployments"
ROLE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,49}$")
VARIABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Nodes in these states take no deployment.
UNDEPLOYABLE_STATES = frozenset({NodeState.DECOMMISSIONED, NodeState.PENDING, NodeState.ENROLLING})


class RunNotClaimable(Conflict):
    default_code = "run_not_claimable"


class LeaseLost(Exception):
    """The executor's fencing token no longer matches the run: another owner or an end took it."""


class RunWaiting(Exception):
    """The run may not start yet (its nodes are busy, or the maintenance policy says wait); it stays
    ``queued`` with ``reason`` on its row. Ask again in ``retry_in`` seconds."""

    def __init__(self, reason: str, retry_in: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in


@dataclass(frozen=True)
class Lease:
    run_id: Any
    owner: str
    token: int


def ansible_dir() -> Path:
    return Path(settings.DEPLOYMENTS_ANSIBLE_DIR)


def role_is_deployable(name: str) -> bool:
    """Whether the registry role has a real Ansible role (roles not written yet cannot be deployed)."""
    ansible_role = ROLES[name].ansible_role
    return bool(ansible_role) and (ansible_dir() / "roles" / ansible_role / "tasks" / "main.yml").is_file()


def enqueue_run(run: DeploymentRun) -> None:
    """Send the run's id (only) to the deployments queue, once the transaction commits."""
    run_id = str(run.pk)

    def send() -> None:
        from slm_project import celery_app

        celery_app.send_task(EXECUTE_TASK, args=[run_id], queue=EXECUTE_QUEUE)

    transaction.on_commit(send)


# --------------------------------------------------------------------------------------------------
# Requests


def _validate_roles(roles: list[str]) -> list[str]:
    if not roles:
        raise ValidationError({"roles": ["Name at least one role."]})
    for name in roles:
        if not isinstance(name, str) or not ROLE_NAME.match(name):
            raise ValidationError(
                {"roles": [f"{name!r} is not a role name (lower-case letters, digits, '-')."]}
            )
    unknown = sorted(set(roles) - ROLES.keys())
    if unknown:
        raise ValidationError({"roles": [f"Unknown roles: {', '.join(unknown)}."]})
    not_ready = sorted(name for name in set(roles) if not role_is_deployable(name))
    if not_ready:
        raise ValidationError({"roles": [f"No Ansible role exists yet for: {', '.join(not_ready)}."]})
    return dependency_order(list(dict.fromkeys(roles)))


def _validate_extra_vars(extra_vars: dict[str, Any], roles: list[str]) -> dict[str, Any]:
    if not isinstance(extra_vars, dict):
        raise ValidationError({"extra_vars": ["Give an object of variable names and values."]})
    allowed = {variable for name in roles for variable in ROLES[name].variables}
    errors = []
    for name, value in extra_vars.items():
        if not isinstance(name, str) or not VARIABLE_NAME.match(name) or name not in allowed:
            errors.append(
                f"{name!r} is not a variable of {', '.join(roles)}"
                f" (allowed: {', '.join(sorted(allowed)) or 'none'})."
            )
        elif not isinstance(value, str | int | float | bool) or len(str(value)) > EXTRA_VAR_MAX_CHARS:
            errors.append(f"{name}: a plain value of at most {EXTRA_VAR_MAX_CHARS} characters.")
    if errors:
        raise ValidationError({"extra_vars": errors})
    return dict(extra_vars)


def _validate_nodes(node_ids: list[Any]) -> list[Node]:
    if not node_ids:
        raise ValidationError({"nodes": ["Name at least one node."]})
    nodes = list(Node.objects.filter(pk__in=set(node_ids)))
    if len(nodes) != len(set(node_ids)):
        found = {str(node.pk) for node in nodes}
        missing = sorted(str(node_id) for node_id in set(node_ids) if str(node_id) not in found)
        raise ValidationError({"nodes": [f"Unknown nodes: {', '.join(missing)}."]})
    refused = [f"{node.name} is {node.state}" for node in nodes if node.state in UNDEPLOYABLE_STATES]
    if refused:
        raise Conflict(f"Cannot deploy onto {'; '.join(sorted(refused))}.")
    unpinned = sorted(node.name for node in nodes if not node.host_key)
    if unpinned:
        raise Conflict(f"No pinned host key for {', '.join(unpinned)}: enroll the node first.")
    return nodes


STRATEGY_OPTIONS = {Strategy.ROLLING: ("batch_size", "batch_percent")}


def _validate_strategy_options(strategy: str, options: dict[str, Any]) -> tuple[int | None, int | None]:
    """``(batch_size, batch_percent)`` of a rolling deployment (exactly one set); others take no options."""
    if not isinstance(options, dict):
        raise ValidationError({"strategy_options": ["Give an object of option names and values."]})
    allowed = STRATEGY_OPTIONS.get(strategy, ())
    unknown = sorted(str(name) for name in options if name not in allowed)
    if unknown:
        accepted = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
        raise ValidationError(
            {
                "strategy_options": [
                    f"Unknown options of the {strategy} strategy: {', '.join(unknown)} ({accepted})."
                ]
            }
        )
    if strategy != Strategy.ROLLING:
        return None, None
    batch_size, batch_percent = options.get("batch_size"), options.get("batch_percent")
    if (batch_size is None) == (batch_percent is None):
        raise ValidationError(
            {"strategy_options": ["A rolling deployment takes batch_size or batch_percent."]}
        )
    if batch_size is not None and (type(batch_size) is not int or batch_size < 1):
        raise ValidationError({"strategy_options": ["batch_size: a whole number of nodes, at least 1."]})
    if batch_percent is not None and (type(batch_percent) is not int or not 1 <= batch_percent <= 100):
        raise ValidationError({"strategy_options": ["batch_percent: a whole percentage from 1 to 100."]})
    return batch_size, batch_percent


def node_role_variables(*, node_id: Any, roles: list[str]) -> dict[str, Any]:
    """The operator variables ``roles`` were last deployed with onto the node (each role's allowlisted
    variables from its latest successful plain deploy there). Runs the SLM starts by itself (check-mode
    runs, restarts, drift fixes) take them, so that they act on the node as it was deployed — e.g. a
    check run of an ``llm`` deployed with ``llm_engine=llama_cpp`` checks that engine, not the default."""
    wanted = {role: set(ROLES[role].variables) for role in roles if role in ROLES and ROLES[role].variables}
    found: dict[str, dict[str, Any]] = {}
    runs = (
        DeploymentRun.objects.filter(
            status=RunStatus.SUCCEEDED, deployment__action__isnull=True, deployment__nodes=node_id
        )
        .order_by("-finished_at")
        .values_list("deployment__roles", "deployment__extra_vars")
    )
    for deployed_roles, extra_vars in runs.iterator():
        for role in set(deployed_roles) & (wanted.keys() - found.keys()):
            found[role] = {name: value for name, value in (extra_vars or {}).items() if name in wanted[role]}
        if found.keys() == wanted.keys():
            break
    return {name: value for role in roles for name, value in found.get(role, {}).items()}


def deployment_create(
    *,
    node_ids: list[Any],
    roles: list[str],
    requested_by: str,
    extra_vars: dict[str, Any] | None = None,
    strategy: str = Strategy.ALL_AT_ONCE,
    idempotency_key: str = "",
    timeout_seconds: int = RUN_TIMEOUT_SECONDS,
    strategy_options: dict[str, Any] | None = None,
) -> Deployment:
    """Validate and record a deployment with its first run (``queued``), and enqueue that run.

    The same ``idempotency_key`` returns the deployment made with it before (whatever else was sent).
    ``strategy_options``: a ``rolling`` deployment takes exactly one of ``batch_size`` (nodes per batch) and
    ``batch_percent`` (1 to 100, of the nodes, rounded up); the other strategies take none.
    """
    if len(idempotency_key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise ValidationError({"idempotency_key": [f"At most {IDEMPOTENCY_KEY_MAX_LENGTH} characters."]})
    if idempotency_key:
        existing = Deployment.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
    if strategy not in Strategy.values:
        raise ValidationError({"strategy": [f"Choose one of: {', '.join(Strategy.values)}."]})
    batch_size, batch_percent = _validate_strategy_options(strategy, strategy_options or {})
    ordered_roles = _validate_roles(roles)
    variables = _validate_extra_vars(extra_vars or {}, ordered_roles)
    nodes = _validate_nodes(node_ids)
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                roles=ordered_roles,
                strategy=strategy,
                batch_size=batch_size,
                batch_percent=batch_percent,
                extra_vars=variables,
                requested_by=requested_by,
                idempotency_key=idempotency_key,
            )
            deployment.nodes.set(nodes)
            for node in nodes:
                current = list(node.node_roles.values_list("role__name", flat=True))
                node_roles_set(node=node, roles=sorted(set(current) | set(ordered_roles)))
            run = DeploymentRun.objects.create(deployment=deployment, timeout_seconds=timeout_seconds)
            enqueue_run(run)
    except IntegrityError:
        # The same key was used by a concurrent request that committed first.
        if idempotency_key:
            return Deployment.objects.get(idempotency_key=idempotency_key)
        raise
    logger.info(
        "deployment %s created by %s: roles=%s nodes=%d", deployment.pk, requested_by, roles, len(nodes)
    )
    return deployment


def latest_run(deployment: Deployment) -> DeploymentRun:
    return deployment.runs.order_by("-attempt").first()


@transaction.atomic
def deployment_cancel(*, deployment: Deployment, actor: str) -> DeploymentRun:
    """Cancel the deployment's current run: a queued run ends at once; a running one is asked to stop
    (its executor polls the row, kills Ansible and ends the run ``canceled``)."""
    run = DeploymentRun.objects.select_for_update().get(pk=latest_run(deployment).pk)
    if run.status in FINISHED:
        raise Conflict(f"The run is {run.status} already.")
    now = timezone.now()
    if run.status == RunStatus.QUEUED:
        run.status, run.status_reason, run.finished_at = RunStatus.CANCELED, f"canceled by {actor}", now
    run.cancel_requested_at, run.cancel_requested_by = now, actor
    run.save(
        update_fields=["status", "status_reason", "finished_at", "cancel_requested_at", "cancel_requested_by"]
    )
    Deployment.objects.filter(pk=deployment.pk).update(status=run.status, updated_at=now)
    return run


# --------------------------------------------------------------------------------------------------
# The executor's writes


def deployment_run_claim(
    *, run_id: Any, owner: str, host: str = "", pid: int | None = None, work_dir: str = ""
) -> Lease:
    """Take ``run_id`` for this executor, or refuse (``RunNotClaimable``) if it is not ``queued``.

    In the same transaction the run's plan is fixed (``strategies.plan``), the maintenance policy is
    asked and the run's nodes are locked; when the policy says wait or a node is held by another run,
    the run stays ``queued`` with the reason on its row and ``RunWaiting`` is raised. ``host``, ``pid``
    and ``work_dir`` are where the executor runs and keeps the run's files (see ``DeploymentRun``).
    """
    waiting: RunWaiting | None = None
    with transaction.atomic():
        run = (
            DeploymentRun.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("deployment")
            .filter(pk=run_id)
            .first()
        )
        if run is None:
            # Locked by someone else: a claim in progress, or (after the claim) a lease renewal or a
            # duplicate delivery looking at it. The committed status tells which refusal is true.
            status = DeploymentRun.objects.filter(pk=run_id).values_list("status", "lease_owner").first()
            if status is None:
                raise NotFound(f"There is no deployment run {run_id}.")
            if status[0] != RunStatus.QUEUED:
                raise _already_started(run_id, *status)
            raise RunNotClaimable(f"Run {run_id} is being claimed by another worker.")
        if run.status != RunStatus.QUEUED:
            raise _already_started(run_id, run.status, run.lease_owner)
        now = timezone.now()
        deployment = run.deployment
        nodes = list(deployment.nodes.order_by("pk").values_list("pk", "name"))
        waiting = _policy_refusal(deployment, now) or _node_locks_take(run, [pk for pk, _ in nodes], now)
        if waiting is not None:
            DeploymentRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).update(
                status_reason=waiting.reason[:500]
            )
        else:
            token = run.fencing_token + 1
            steps = strategies.plan(
                strategy=deployment.strategy,
                roles=deployment.roles,
                nodes=nodes,
                batch_size=deployment.batch_size,
                batch_percent=deployment.batch_percent,
            )
            # Conditional as well as locked: on databases without row locks (SQLite) the guard decides.
            claimed = DeploymentRun.objects.filter(
                pk=run.pk, status=RunStatus.QUEUED, fencing_token=run.fencing_token
            )
            if not claimed.update(
                status=RunStatus.RUNNING,
                status_reason="",
                lease_owner=owner[:200],
                lease_expires_at=now + timedelta(seconds=LEASE_SECONDS),
                fencing_token=token,
                started_at=now,
                steps=strategies.steps_json(steps),
                executor_host=host[:253],
                executor_pid=pid,
                work_dir=work_dir[:500],
            ):
                raise RunNotClaimable(f"Run {run_id} was claimed by another worker.")
            Deployment.objects.filter(pk=run.deployment_id).update(status=RunStatus.RUNNING, updated_at=now)
    if waiting is not None:
        logger.info("deployment run %s waits: %s", run_id, waiting.reason)
        raise waiting
    return Lease(run_id=run.pk, owner=owner, token=token)


def _already_started(run_id: Any, status: str, lease_owner: str) -> RunNotClaimable:
    held = f", held by {lease_owner}" if status == RunStatus.RUNNING else ""
    return RunNotClaimable(f"Run {run_id} is {status}{held}: a run is started only once.")


def _policy_refusal(deployment: Deployment, now: datetime) -> RunWaiting | None:
    decision = policy.may_start(deployment)
    if decision.allowed:
        return None
    retry_in = float(POLICY_RETRY_MAX_SECONDS)
    if decision.retry_at is not None:
        retry_in = min(max((decision.retry_at - now).total_seconds(), 1.0), POLICY_RETRY_MAX_SECONDS)
    when = f" (asked again at {decision.retry_at.isoformat()})" if decision.retry_at is not None else ""
    reason = decision.reason or "the maintenance policy does not allow it now"
    return RunWaiting(f"waiting: {reason}{when}", retry_in)


def _node_locks_take(run: DeploymentRun, node_ids: list[Any], now: datetime) -> RunWaiting | None:
    """Lock ``node_ids`` for ``run`` (in the caller's transaction), or say which run holds one of them."""
    held = (
        DeploymentNodeLock.objects.filter(node_id__in=node_ids)
        .exclude(run=run)
        .select_related("node", "run")
        .order_by("node__name")
    )
    busy = [
        f"{lock.node.name} (held by run {lock.run_id} since {lock.acquired_at:%H:%M:%S})" for lock in held
    ]
    if not busy:
        try:
            # In node id order, so that two claims with common nodes queue on the same first one rather
            # than deadlock; a savepoint, since a concurrent claim may take a node first.
            with transaction.atomic():
                DeploymentNodeLock.objects.bulk_create(
                    [
                        DeploymentNodeLock(node_id=node_id, run=run, acquired_at=now)
                        for node_id in sorted(node_ids)
                    ]
                )
            return None
        except IntegrityError:
            busy = ["a node just taken by another run"]
    return RunWaiting(f"waiting for {', '.join(busy)}", NODE_BUSY_RETRY_SECONDS)


def _node_locks_release(run_id: Any) -> None:
    """Give up the run's nodes and send again the queued runs that were waiting for them."""
    node_ids = list(DeploymentNodeLock.objects.filter(run_id=run_id).values_list("node_id", flat=True))
    if not node_ids:
        return
    DeploymentNodeLock.objects.filter(run_id=run_id).delete()
    waiting = (
        DeploymentRun.objects.filter(status=RunStatus.QUEUED, deployment__nodes__in=node_ids)
        .exclude(status_reason="")
        .distinct()
    )
    for run in waiting:
        enqueue_run(run)


def _fenced(lease: Lease, **fields: Any) -> None:
    updated = DeploymentRun.objects.filter(
        pk=lease.run_id, fencing_token=lease.token, status=RunStatus.RUNNING
    ).update(**fields)
    if not updated:
        raise LeaseLost(f"run {lease.run_id}: fencing token {lease.token} is no longer valid")


def deployment_run_renew(*, lease: Lease) -> DeploymentRun:
    """Extend the lease; returns the run row (the executor reads cancel requests from it)."""
    _fenced(lease, lease_expires_at=timezone.now() + timedelta(seconds=LEASE_SECONDS))
    return DeploymentRun.objects.only("cancel_requested_at").get(pk=lease.run_id)


def _event_uuid(value: Any) -> uuid.UUID | None:
    """An event's (parent) uuid. Ansible names the tasks an ``include_role`` brings in for the second and
    later hosts ``<task uuid>_<n>``: such a parent is stored as the task's uuid."""
    if not value:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        try:
            return uuid.UUID(str(value).partition("_")[0])
        except ValueError:
            return None


def _created(value: Any) -> datetime:
    parsed = parse_datetime(value) if isinstance(value, str) else None
    return parsed or timezone.now()


@transaction.atomic
def deployment_events_store(*, lease: Lease, records: list[dict[str, Any]], emitted: int) -> int:
    """Insert a batch of events (as ``runners.ansible.event_record`` made them) in one statement."""
    _fenced(
        lease,
        events_stored=F("events_stored") + len(records),
        events_emitted=emitted,
        lease_expires_at=timezone.now() + timedelta(seconds=LEASE_SECONDS),
    )
    DeploymentEvent.objects.bulk_create(
        [
            DeploymentEvent(
                run_id=lease.run_id,
                counter=record["counter"],
                uuid=_event_uuid(record["uuid"]) or uuid.uuid4(),
                parent_uuid=_event_uuid(record["parent_uuid"]),
                event=record["event"][:100],
                host=record["host"],
                play=record["play"],
                task=record["task"],
                changed=record["changed"],
                failed=record["failed"],
                duration=record["duration"],
                stdout=record["stdout"],
                result=record["result"],
                created_at=_created(record["created"]),
            )
            for record in records
        ]
    )
    return len(records)


STATUS_OF_OUTCOME = {
    "successful": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
    "canceled": RunStatus.CANCELED,
    "timeout": RunStatus.TIMED_OUT,
}


@transaction.atomic
def deployment_run_finish(
    *,
    lease: Lease,
    status: str,
    reason: str = "",
    rc: int | None = None,
    host_stats: dict[str, Any] | None = None,
    emitted: int | None = None,
) -> DeploymentRun:
    """End the run (fenced), bring the deployment and the node roles along, and free the run's nodes.

    Steps still pending are ``skipped``; node roles still ``deploying`` (a step that did not end) become
    ``active`` on success, ``failed`` on failure or timeout, ``assigned`` again otherwise.
    """
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": status,
        "status_reason": reason[:500],
        "rc": rc,
        "host_stats": host_stats or {},
        "finished_at": now,
        "lease_expires_at": None,
    }
    if emitted is not None:
        fields["events_emitted"] = emitted
    # The check constraint wants a lease on running rows only; this row leaves ``running`` here.
    _fenced(lease, **fields)
    run = DeploymentRun.objects.select_related("deployment").get(pk=lease.run_id)
    if run.steps:
        run.steps = _steps_ended(run.steps, status, now)
        run.save(update_fields=["steps"])
    Deployment.objects.filter(pk=run.deployment_id).update(status=status, updated_at=now)
    node_roles = NodeRole.objects.filter(
        node__deployments=run.deployment_id,
        role__name__in=run.deployment.roles,
        status=NodeRoleStatus.DEPLOYING,
    )
    if status == RunStatus.SUCCEEDED:
        node_roles.update(status=NodeRoleStatus.ACTIVE)
    elif status in (RunStatus.FAILED, RunStatus.TIMED_OUT):
        node_roles.update(status=NodeRoleStatus.FAILED)
    else:
        node_roles.update(status=NodeRoleStatus.ASSIGNED)
    _node_locks_release(run.pk)
    logger.info("deployment run %s ended %s: %s", run.pk, status, reason)
    return run


def _steps_ended(steps: list[dict[str, Any]], status: str, now: datetime) -> list[dict[str, Any]]:
    """The run ended: a step still running ends with it, steps not started are skipped."""
    ended = []
    for step in steps:
        step = dict(step)
        if step["status"] == StepStatus.RUNNING:
            step.update(status=status if status in StepStatus.values else StepStatus.FAILED)
            step["finished_at"] = now.isoformat()
        elif step["status"] == StepStatus.PENDING:
            step["status"] = StepStatus.SKIPPED
        ended.append(step)
    return ended


# --------------------------------------------------------------------------------------------------
# Steps of a run (strategies.py), written by the executor


@transaction.atomic
def deployment_step_start(*, lease: Lease, steps: list[dict[str, Any]], index: int) -> None:
    """Step ``index`` starts: recorded on the run (fenced), its node roles become ``deploying``."""
    step = steps[index]
    step.update(status=StepStatus.RUNNING, started_at=timezone.now().isoformat())
    _fenced(lease, steps=steps, lease_expires_at=timezone.now() + timedelta(seconds=LEASE_SECONDS))
    NodeRole.objects.filter(node_id__in=step["node_ids"], role__name__in=step["roles"]).update(
        status=NodeRoleStatus.DEPLOYING
    )


@transaction.atomic
def deployment_step_finish(
    *,
    lease: Lease,
    steps: list[dict[str, Any]],
    index: int,
    status: str,
    reason: str = "",
    failed_nodes: list[str] | tuple[str, ...] = (),
) -> None:
    """Step ``index`` ended with ``status``: recorded on the run (fenced). Its node roles become
    ``active``, or ``failed`` on the nodes in ``failed_nodes`` (names; every node of the step when the
    step failed without naming one); a canceled step leaves them ``assigned``."""
    step = steps[index]
    step.update(status=status, reason=reason[:500], finished_at=timezone.now().isoformat())
    _fenced(lease, steps=steps, lease_expires_at=timezone.now() + timedelta(seconds=LEASE_SECONDS))
    node_roles = NodeRole.objects.filter(node_id__in=step["node_ids"], role__name__in=step["roles"])
    if status == StepStatus.SUCCEEDED:
        node_roles.update(status=NodeRoleStatus.ACTIVE)
    elif status in (StepStatus.FAILED, StepStatus.TIMED_OUT):
        if failed_nodes:
            node_roles.filter(node__name__in=failed_nodes).update(status=NodeRoleStatus.FAILED)
            node_roles.exclude(node__name__in=failed_nodes).update(status=NodeRoleStatus.ACTIVE)
        else:
            node_roles.update(status=NodeRoleStatus.FAILED)
    else:
        node_roles.filter(status=NodeRoleStatus.DEPLOYING).update(status=NodeRoleStatus.ASSIGNED)


def deployment_run_process_group_record(*, lease: Lease, pgid: int) -> None:
    """Where ``ansible-playbook`` runs (its process group), for the cleanup after a killed worker."""
    _fenced(lease, ansible_pgid=pgid)


# --------------------------------------------------------------------------------------------------
# The reaper: runs whose executor died


def deployment_runs_reap(
    *, now: datetime | None = None, follow_up: Callable[[DeploymentRun], None] | None = None
) -> list[DeploymentRun]:
    """End every ``running`` run whose lease expired as ``lost``, with the reason; its steps and node roles
    are repaired, and the next attempt is queued (or, after ``RUN_MAX_ATTEMPTS``, the deployment fails).

    The lost run keeps its node locks: its worker may have died leaving ``ansible-playbook`` running
    (see ``execution.orphans_clear``), and the next attempt must not overlap it. They are freed by
    ``deployment_run_orphans_cleared`` or, for a host that never cleans up, by
    ``deployment_node_locks_expire``.
    Each run is reaped in its own transaction, skipping a row another reaper holds; ``follow_up(run)``
    (the lifecycle's, see ``execution._finish``) runs in that transaction too.
    """
    now = now or timezone.now()
    expired = DeploymentRun.objects.filter(status=RunStatus.RUNNING, lease_expires_at__lt=now)
    reaped = []
    for run_id in list(expired.values_list("pk", flat=True)):
        with transaction.atomic():
            run = (
                DeploymentRun.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("deployment")
                .filter(pk=run_id, status=RunStatus.RUNNING, lease_expires_at__lt=now)
                .first()
            )
            if run is not None:
                reaped.append(_reap(run, now))
                if follow_up is not None:
                    follow_up(reaped[-1])
    return reaped


def _reap(run: DeploymentRun, now: datetime) -> DeploymentRun:
    where = f" on {run.executor_host} (pid {run.executor_pid})" if run.executor_host else ""
    reason = (
        f"lost: its executor {run.lease_owner}{where} stopped renewing the lease, which expired at "
        f"{run.lease_expires_at:%H:%M:%S}; the worker was probably killed"
    )
    deployment = run.deployment
    retry = run.attempt < RUN_MAX_ATTEMPTS and run.cancel_requested_at is None
    if retry:
        reason += f"; attempt {run.attempt + 1} of {RUN_MAX_ATTEMPTS} is queued"
    elif run.cancel_requested_at is not None:
        reason += "; not retried (a cancel was requested)"
    else:
        reason += f"; no attempt left ({run.attempt} of {RUN_MAX_ATTEMPTS}): the deployment failed"
    DeploymentRun.objects.filter(pk=run.pk, fencing_token=run.fencing_token).update(
        status=RunStatus.LOST,
        status_reason=reason[:500],
        # A new token: the old executor, if only stalled, can write nothing more.
        fencing_token=F("fencing_token") + 1,
        lease_expires_at=None,
        finished_at=now,
        steps=_steps_ended(run.steps, StepStatus.LOST, now),
    )
    NodeRole.objects.filter(
        node__deployments=deployment.pk, role__name__in=deployment.roles, status=NodeRoleStatus.DEPLOYING
    ).update(status=NodeRoleStatus.ASSIGNED)
    if retry:
        next_run = DeploymentRun.objects.create(
            deployment=deployment, attempt=run.attempt + 1, timeout_seconds=run.timeout_seconds
        )
        enqueue_run(next_run)
        status = RunStatus.QUEUED
    else:
        status = RunStatus.LOST if run.cancel_requested_at is not None else RunStatus.FAILED
    Deployment.objects.filter(pk=deployment.pk).update(status=status, updated_at=now)
    logger.warning("deployment run %s %s", run.pk, reason)
    run.refresh_from_db()
    return run


@transaction.atomic
def deployment_run_orphans_cleared(*, run_id: Any) -> None:
    """The lost run's processes are known dead and its files gone: record it and free its nodes."""
    lost = DeploymentRun.objects.filter(pk=run_id, status=RunStatus.LOST)
    lost.filter(orphans_cleared_at__isnull=True).update(orphans_cleared_at=timezone.now())
    if lost.exists():
        _node_locks_release(run_id)


def deployment_node_locks_expire(*, now: datetime | None = None) -> int:
    """Free the nodes of runs that ended without freeing them (lost runs whose host did not clean up
    within ``ORPHAN_CLEANUP_GRACE_SECONDS``: the host is taken to be gone); how many runs were freed."""
    cutoff = (now or timezone.now()) - timedelta(seconds=ORPHAN_CLEANUP_GRACE_SECONDS)
    stale = (
        DeploymentRun.objects.filter(node_locks__isnull=False, status__in=FINISHED, finished_at__lt=cutoff)
        .values_list("pk", flat=True)
        .distinct()
    )
    freed = 0
    for run_id in list(stale):
        with transaction.atomic():
            logger.warning("deployment run %s: its host never cleaned up; its nodes are freed", run_id)
            _node_locks_release(run_id)
            freed += 1
    return freed


# --------------------------------------------------------------------------------------------------
# Secrets a run needs


def vault_variable(*, role: str, variable: str) -> str:
    """The value of a role's vault variable (e.g. redis_password), made once and kept in the vault."""
    name = f"role:{role}:{variable}"
    with transaction.atomic():
        credential = (
            Credential.objects.select_for_update().filter(name=name, kind=CredentialKind.GENERIC).first()
        )
        if credential is None:
            credential = credential_store(
                kind=CredentialKind.GENERIC, name=name, secret=secrets.token_urlsafe(32)
            )
    return credential_reveal(credential=credential).decode()


# --------------------------------------------------------------------------------------------------
# Requests from the API and the ops portal: creation with its outcome, retry

# A deployment whose latest run ended like this may get a new attempt; a succeeded one is deployed anew.
RETRYABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELED, RunStatus.TIMED_OUT, RunStatus.LOST})


def deployment_request(
    *,
    node_ids: list[Any],
    roles: list[str],
    requested_by: str,
    strategy: str = Strategy.ALL_AT_ONCE,
    strategy_options: dict[str, Any] | None = None,
    extra_vars: dict[str, Any] | None = None,
    idempotency_key: str = "",
) -> tuple[Deployment, bool]:
    """``deployment_create`` for the entry points: ``(deployment, created)``, where ``created`` is false
    when the idempotency key named a deployment made before (the API answers 200 instead of 201)."""
    if idempotency_key:
        existing = Deployment.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    deployment = deployment_create(
        node_ids=node_ids,
        roles=roles,
        requested_by=requested_by,
        extra_vars=extra_vars,
        strategy=strategy,
        strategy_options=strategy_options,
        idempotency_key=idempotency_key,
    )
    # A concurrent request with the same key that committed first is answered as created too: both
    # callers get the one deployment, which is what the key promises.
    return deployment, True


@transaction.atomic
def deployment_retry(*, deployment: Deployment, actor: str) -> DeploymentRun:
    """Queue a new attempt of a deployment whose latest run failed, was lost, canceled or timed out.

    The deployment row is locked, so two concurrent retries make one attempt (the second sees it
    queued and is refused). The nodes are judged again: one decommissioned since is refused.
    """
    locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
    last = latest_run(locked)
    if last is not None and last.status not in RETRYABLE:
        advice = " Request a new deployment instead." if last.status == RunStatus.SUCCEEDED else ""
        raise Conflict(
            f"Attempt {last.attempt} is {last.status}: only a run that ended without success is retried."
            f"{advice}"
        )
    _validate_nodes(list(locked.nodes.values_list("pk", flat=True)))
    now = timezone.now()
    run = DeploymentRun.objects.create(
        deployment=locked,
        attempt=(last.attempt + 1) if last is not None else 1,
        timeout_seconds=last.timeout_seconds if last is not None else RUN_TIMEOUT_SECONDS,
    )
    Deployment.objects.filter(pk=locked.pk).update(status=RunStatus.QUEUED, updated_at=now)
    enqueue_run(run)
    logger.info("deployment %s: attempt %d queued by %s", locked.pk, run.attempt, actor)
    return run
