"""Writes of deployments: requests (create, cancel) and the executor's fenced writes on a run.

A run is executed by one worker at a time. ``deployment_run_claim`` hands the worker a ``Lease``: the
run row was locked with ``SELECT … FOR UPDATE SKIP LOCKED`` (a second worker skips it at once) and
moved from ``queued`` to ``running`` with a new fencing token. Every later write of that worker
(events, lease renewal, the end of the run) is an ``UPDATE … WHERE fencing_token = <its token> AND
status = 'running'``; when it matches no row the worker has lost the run (``LeaseLost``) and stops.
"""

from __future__ import annotations

import logging
import re
import secrets
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
from slm_project.deployments.choices import FINISHED, RunStatus, Strategy
from slm_project.deployments.constants import (
    EXTRA_VAR_MAX_CHARS,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    LEASE_SECONDS,
    RUN_TIMEOUT_SECONDS,
)
from slm_project.deployments.models import Deployment, DeploymentEvent, DeploymentRun
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


def deployment_create(
    *,
    node_ids: list[Any],
    roles: list[str],
    requested_by: str,
    extra_vars: dict[str, Any] | None = None,
    strategy: str = Strategy.ALL_AT_ONCE,
    idempotency_key: str = "",
    timeout_seconds: int = RUN_TIMEOUT_SECONDS,
) -> Deployment:
    """Validate and record a deployment with its first run (``queued``), and enqueue that run.

    The same ``idempotency_key`` returns the deployment made with it before (whatever else was sent).
    """
    if len(idempotency_key) > IDEMPOTENCY_KEY_MAX_LENGTH:
        raise ValidationError({"idempotency_key": [f"At most {IDEMPOTENCY_KEY_MAX_LENGTH} characters."]})
    if idempotency_key:
        existing = Deployment.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
    if strategy not in Strategy.values:
        raise ValidationError({"strategy": [f"Choose one of: {', '.join(Strategy.values)}."]})
    ordered_roles = _validate_roles(roles)
    variables = _validate_extra_vars(extra_vars or {}, ordered_roles)
    nodes = _validate_nodes(node_ids)
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                roles=ordered_roles,
                strategy=strategy,
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


def deployment_run_claim(*, run_id: Any, owner: str) -> Lease:
    """Take ``run_id`` for this executor, or refuse (``RunNotClaimable``) if it is not ``queued``."""
    with transaction.atomic():
        run = DeploymentRun.objects.select_for_update(skip_locked=True).filter(pk=run_id).first()
        if run is None:
            if not DeploymentRun.objects.filter(pk=run_id).exists():
                raise NotFound(f"There is no deployment run {run_id}.")
            raise RunNotClaimable(f"Run {run_id} is being claimed by another worker.")
        if run.status != RunStatus.QUEUED:
            held = f", held by {run.lease_owner}" if run.status == RunStatus.RUNNING else ""
            raise RunNotClaimable(f"Run {run_id} is {run.status}{held}: a run is started only once.")
        now = timezone.now()
        token = run.fencing_token + 1
        # Conditional as well as locked: on databases without row locks (SQLite) the guard decides.
        claimed = DeploymentRun.objects.filter(
            pk=run.pk, status=RunStatus.QUEUED, fencing_token=run.fencing_token
        )
        if not claimed.update(
            status=RunStatus.RUNNING,
            lease_owner=owner[:200],
            lease_expires_at=now + timedelta(seconds=LEASE_SECONDS),
            fencing_token=token,
            started_at=now,
        ):
            raise RunNotClaimable(f"Run {run_id} was claimed by another worker.")
        Deployment.objects.filter(pk=run.deployment_id).update(status=RunStatus.RUNNING, updated_at=now)
        NodeRole.objects.filter(
            node__deployments=run.deployment_id, role__name__in=run.deployment.roles
        ).update(status=NodeRoleStatus.DEPLOYING)
    return Lease(run_id=run.pk, owner=owner, token=token)


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
                uuid=record["uuid"],
                parent_uuid=record["parent_uuid"],
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
    """End the run (fenced), and bring the deployment and the node roles along."""
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
    Deployment.objects.filter(pk=run.deployment_id).update(status=status, updated_at=now)
    node_roles = NodeRole.objects.filter(
        node__deployments=run.deployment_id, role__name__in=run.deployment.roles
    )
    if status == RunStatus.SUCCEEDED:
        node_roles.update(status=NodeRoleStatus.ACTIVE)
    elif status in (RunStatus.FAILED, RunStatus.TIMED_OUT):
        node_roles.update(status=NodeRoleStatus.FAILED)
    else:
        node_roles.filter(status=NodeRoleStatus.DEPLOYING).update(status=NodeRoleStatus.ASSIGNED)
    logger.info("deployment run %s ended %s: %s", run.pk, status, reason)
    return run


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
