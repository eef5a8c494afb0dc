"""The reconciler: what each node should run against what it runs (beat, ``deployments.reconcile``).

For every node the reconciler may judge (``online`` or ``degraded``, with no deployment run queued or
running on it) and each of its roles it compares:

- ``version``: the desired version with the version the agent reports;
- ``not_deployed``: a role that no deployment ever put on the node successfully and that the agent does
  not report running either;
- ``missing_services``: services of a deployed role the agent does not report at all (stopped or failed
  ones are the remediator's);
- ``check``: tasks the latest check-mode run (``--check --diff``, after the role's last deployment)
  would change; the diffs themselves are ``RunDiff`` rows;
- ``unexpected``: services of a role the node does not have that the agent reports running.

Each drift is a ``RoleDrift`` row, one open per node and role, announced once by a ``role.drift``
node event (again only when what differs changes) and resolved, with a ``role.drift_resolved`` event,
when the difference is gone. Where the policy says so (``DEPLOYMENTS_AUTO_REMEDIATE_DRIFT``, per role
``DEPLOYMENTS_AUTO_REMEDIATE_DRIFT_ROLES``) the reconciler deploys the role onto the node, once per drift
(the idempotency key is derived from node, role, desired version and the drift). Otherwise the event
needs an operator's attention, and is acknowledged by the reconciler when the drift goes away.

``check_runs_schedule`` (beat, ``deployments.check_runs``) makes the check-mode runs: one per online
node and interval, over the roles deployed there.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework.exceptions import APIException

from slm_project.deployments import actions, services
from slm_project.deployments.choices import FINISHED, RunStatus
from slm_project.deployments.models import Deployment, DeploymentAction, DeploymentRun, RoleDrift, RunDiff
from slm_project.fleet.choices import EventKind, NodeRoleStatus, NodeState, ServiceState, Severity
from slm_project.fleet.models import Node, NodeEvent, NodeRole, Service
from slm_project.fleet.registry import ROLES, dependency_order
from slm_project.fleet.services import node_event

logger = logging.getLogger(__name__)

ACTOR = "reconciler"
RECONCILED_STATES = (NodeState.ONLINE, NodeState.DEGRADED)
IN_FLIGHT = (RunStatus.QUEUED, RunStatus.RUNNING)
# Aspects a deployment of the role fixes (an unexpected role is not removed by deploying anything).
DEPLOYABLE_ASPECTS = frozenset({"version", "not_deployed", "missing_services", "check"})
ROLE_OF_ANSIBLE_ROLE = {definition.ansible_role: name for name, definition in ROLES.items()}


@dataclass
class ReconcileResult:
    opened: list[str] = field(default_factory=list)  # "node/role"
    changed: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    deployments: list[str] = field(default_factory=list)  # deployment ids


def auto_remediate(role: str) -> bool:
    """The policy: whether drift of ``role`` is fixed by a deployment without an operator."""
    return bool(
        settings.DEPLOYMENTS_AUTO_REMEDIATE_DRIFT_ROLES.get(role, settings.DEPLOYMENTS_AUTO_REMEDIATE_DRIFT)
    )


def drift_fingerprint(details: dict[str, Any]) -> str:
    """The digest of what differs (without the id of the check run that saw it: a later check run that
    sees the same changes is the same drift)."""
    stable = {
        aspect: {key: value for key, value in item.items() if key != "run"}
        if isinstance(item, dict)
        else item
        for aspect, item in details.items()
    }
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()


def drift_summary(details: dict[str, Any]) -> str:
    parts = []
    if "version" in details:
        parts.append(
            f"version {details['version']['actual'] or '(none)'}, wanted {details['version']['desired']}"
        )
    if "not_deployed" in details:
        parts.append("never deployed")
    if "missing_services" in details:
        parts.append(f"services not reported: {', '.join(details['missing_services'])}")
    if "check" in details:
        parts.append(f"a check run would change: {', '.join(details['check']['tasks'][:5])}")
    if "unexpected" in details:
        parts.append(f"runs without the role: {', '.join(details['unexpected'])}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# What differs


def _last_deployed(node_ids: list[Any]) -> dict[tuple[Any, str], datetime]:
    """When each (node, role) was last deployed successfully (deploys only, not service or check runs)."""
    last: dict[tuple[Any, str], datetime] = {}
    rows = DeploymentRun.objects.filter(
        status=RunStatus.SUCCEEDED,
        deployment__action__isnull=True,
        deployment__nodes__in=node_ids,
    ).values_list("deployment__nodes", "deployment__roles", "finished_at")
    for node_id, roles, finished_at in rows:
        for role in roles:
            previous = last.get((node_id, role))
            if finished_at is not None and (previous is None or finished_at > previous):
                last[(node_id, role)] = finished_at
    return last


def _latest_check_changes(node_ids: list[Any]) -> dict[Any, tuple[DeploymentRun, dict[str, list[str]]]]:
    """Per node: its latest finished check-mode run and the tasks it would change, by registry role."""
    latest: dict[Any, DeploymentRun] = {}
    runs = (
        DeploymentRun.objects.filter(
            deployment__action__kind=DeploymentAction.Kind.CHECK,
            deployment__nodes__in=node_ids,
            status__in=(RunStatus.SUCCEEDED, RunStatus.FAILED),
        )
        .select_related("deployment")
        .annotate(node_id=F("deployment__nodes"))
        .order_by("-finished_at")
    )
    for run in runs:
        latest.setdefault(run.node_id, run)
    changes: dict[Any, tuple[DeploymentRun, dict[str, list[str]]]] = {}
    for node_id, run in latest.items():
        by_role: dict[str, list[str]] = defaultdict(list)
        for diff in RunDiff.objects.filter(run=run, changed=True).order_by("counter"):
            # Tasks of shared roles (``common``) are fixed by deploying any role: the first one.
            role = ROLE_OF_ANSIBLE_ROLE.get(diff.role) or run.deployment.roles[0]
            by_role[role].append(diff.task)
        changes[node_id] = (run, dict(by_role))
    return changes


def observed_drifts(nodes: list[Node]) -> dict[tuple[Any, Any], dict[str, Any]]:
    """``{(node id, role id): details}`` for every drift of ``nodes`` (see the module docstring)."""
    node_ids = [node.pk for node in nodes]
    heard_from = {node.pk for node in nodes if node.last_heartbeat_at is not None}
    last_deployed = _last_deployed(node_ids)
    checks = _latest_check_changes(node_ids)
    services_of: dict[Any, dict[str, Service]] = defaultdict(dict)
    for service in Service.objects.filter(node__in=node_ids).select_related("role"):
        services_of[service.node_id][service.name] = service
    assigned: dict[Any, set[Any]] = defaultdict(set)
    drifts: dict[tuple[Any, Any], dict[str, Any]] = {}
    for node_role in NodeRole.objects.filter(node__in=node_ids).select_related("role"):
        node_id, role = node_role.node_id, node_role.role
        assigned[node_id].add(role.pk)
        definition = ROLES.get(role.name)
        if definition is None:
            continue
        details: dict[str, Any] = {}
        if node_role.desired_version and node_role.actual_version != node_role.desired_version:
            details["version"] = {"desired": node_role.desired_version, "actual": node_role.actual_version}
        deployed_at = last_deployed.get((node_id, role.name))
        if deployed_at is None and node_role.status != NodeRoleStatus.ACTIVE:
            if services.role_is_deployable(role.name):
                details["not_deployed"] = True
        elif node_id in heard_from:
            reported = services_of[node_id]
            missing = [
                name
                for name in definition.services
                if name not in reported or reported[name].state == ServiceState.UNKNOWN
            ]
            if missing:
                details["missing_services"] = missing
        check = checks.get(node_id)
        if check is not None:
            run, by_role = check
            after_deploy = deployed_at is None or (run.finished_at and run.finished_at > deployed_at)
            if by_role.get(role.name) and after_deploy:
                details["check"] = {"run": str(run.pk), "tasks": by_role[role.name]}
        if details:
            drifts[(node_id, role.pk)] = details
    for node_id, reported in services_of.items():
        for service in reported.values():
            if (
                service.role_id is not None
                and service.role_id not in assigned[node_id]
                and service.state == ServiceState.RUNNING
            ):
                details = drifts.setdefault((node_id, service.role_id), {})
                details.setdefault("unexpected", []).append(service.name)
    return drifts


# --------------------------------------------------------------------------------------------------
# The pass


def drift_reconcile(*, now: datetime | None = None) -> ReconcileResult:
    """One pass of the reconciler over the fleet (see the module docstring); idempotent."""
    now = now or timezone.now()
    result = ReconcileResult()
    busy = set(DeploymentRun.objects.filter(status__in=IN_FLIGHT).values_list("deployment__nodes", flat=True))
    nodes = [
        node
        for node in Node.objects.filter(state__in=RECONCILED_STATES).only(
            "id", "name", "state", "last_heartbeat_at", "host_key"
        )
        if node.pk not in busy
    ]
    if not nodes:
        return result
    nodes_by_id = {node.pk: node for node in nodes}
    observed = observed_drifts(nodes)
    open_drifts = {
        (drift.node_id, drift.role_id): drift
        for drift in RoleDrift.objects.filter(resolved_at__isnull=True, node__in=nodes_by_id).select_related(
            "role"
        )
    }
    for key, details in observed.items():
        drift = _drift_record(
            node=nodes_by_id[key[0]], role_id=key[1], details=details, drift=open_drifts.get(key), now=now
        )
        if drift is None:
            continue
        label = f"{nodes_by_id[key[0]].name}/{drift.role.name}"
        if key not in open_drifts:
            result.opened.append(label)
        elif drift.fingerprint != open_drifts[key].fingerprint:
            result.changed.append(label)
        deployment = _drift_deploy(drift=drift, node=nodes_by_id[key[0]])
        if deployment is not None:
            result.deployments.append(str(deployment.pk))
        _drift_fix_failed(drift=drift, node=nodes_by_id[key[0]])
    for key, drift in open_drifts.items():
        if key not in observed:
            _drift_resolve(drift=drift, node=nodes_by_id[key[0]], now=now)
            result.resolved.append(f"{nodes_by_id[key[0]].name}/{drift.role.name}")
    if result.opened or result.changed or result.resolved:
        logger.info(
            "reconciler: %d drifts opened, %d changed, %d resolved, %d deployments",
            len(result.opened),
            len(result.changed),
            len(result.resolved),
            len(result.deployments),
        )
    return result


def _drift_record(
    *, node: Node, role_id: Any, details: dict[str, Any], drift: RoleDrift | None, now: datetime
) -> RoleDrift | None:
    """Open the drift, or bring the open one up to date; announce it when it is new or changed."""
    fingerprint = drift_fingerprint(details)
    with transaction.atomic():
        if drift is None:
            try:
                with transaction.atomic():
                    drift = RoleDrift.objects.create(
                        node=node,
                        role_id=role_id,
                        details=details,
                        fingerprint=fingerprint,
                        first_seen_at=now,
                        last_seen_at=now,
                    )
            except IntegrityError:
                return None  # another reconciler opened it meanwhile: its pass announces it
            drift = RoleDrift.objects.select_related("role").get(pk=drift.pk)
        else:
            drift = RoleDrift.objects.select_for_update().select_related("role").get(pk=drift.pk)
            if drift.resolved_at is not None:
                return None
            if drift.fingerprint == fingerprint:
                RoleDrift.objects.filter(pk=drift.pk).update(details=details, last_seen_at=now)
                drift.details, drift.last_seen_at = details, now
                return drift
        previous_event_id = drift.event_id
        event = node_event(
            node=node,
            kind=EventKind.ROLE_DRIFT,
            severity=Severity.WARNING,
            message=f"{drift.role.name} drifted: {drift_summary(details)}",
            actor=ACTOR,
            data={"role": drift.role.name, "drift": details, "drift_id": drift.pk},
            needs_attention=_needs_operator(drift, details),
        )
        if previous_event_id is not None:
            _acknowledge(previous_event_id, now=now)
        drift.details, drift.fingerprint, drift.last_seen_at, drift.event = details, fingerprint, now, event
        drift.save(update_fields=["details", "fingerprint", "last_seen_at", "event"])
    return drift


def _drift_resolve(*, drift: RoleDrift, node: Node, now: datetime) -> None:
    with transaction.atomic():
        if not RoleDrift.objects.filter(pk=drift.pk, resolved_at__isnull=True).update(
            resolved_at=now, last_seen_at=now
        ):
            return
        if drift.event_id is not None:
            _acknowledge(drift.event_id, now=now)
        node_event(
            node=node,
            kind=EventKind.ROLE_DRIFT_RESOLVED,
            message=f"{drift.role.name} no longer drifts.",
            actor=ACTOR,
            data={"role": drift.role.name, "drift_id": drift.pk},
        )


def _acknowledge(event_id: int, *, now: datetime) -> None:
    NodeEvent.objects.filter(pk=event_id, needs_attention=True, acknowledged_at__isnull=True).update(
        acknowledged_at=now, acknowledged_by=ACTOR
    )


def drift_idempotency_key(*, drift: RoleDrift, desired_version: str) -> str:
    digest = hashlib.sha256(
        f"{drift.node_id}:{drift.role.name}:{desired_version}:{drift.pk}".encode()
    ).hexdigest()
    return f"drift:{digest[:40]}"


def _drift_deploy(*, drift: RoleDrift, node: Node) -> Deployment | None:
    """Deploy the drifted role onto the node where the policy says so, once per drift."""
    role = drift.role.name
    if drift.deployment_id is not None or not auto_remediate(role):
        return None
    if not DEPLOYABLE_ASPECTS & drift.details.keys() or not services.role_is_deployable(role):
        return None
    desired = drift.details.get("version", {}).get("desired", "")
    try:
        deployment = services.deployment_create(
            node_ids=[node.pk],
            roles=[role],
            requested_by=ACTOR,
            idempotency_key=drift_idempotency_key(drift=drift, desired_version=desired),
            # As it was deployed there last, not with the defaults.
            extra_vars=services.node_role_variables(node_id=node.pk, roles=[role]),
        )
    except APIException as exc:
        logger.warning("reconciler: cannot deploy %s onto %s: %s", role, node.name, exc.detail)
        return None
    RoleDrift.objects.filter(pk=drift.pk).update(deployment=deployment)
    drift.deployment = deployment
    return deployment


def _needs_operator(drift: RoleDrift, details: dict[str, Any]) -> bool:
    """Whether a drift's event needs attention: nobody fixes it (the policy does not deploy, or nothing
    deployable differs), or the reconciler's fix has ended and the drift is still there."""
    fixed_by_policy = auto_remediate(drift.role.name) and bool(DEPLOYABLE_ASPECTS & details.keys())
    return not fixed_by_policy or _fix_ended(drift) is not None


def _fix_ended(drift: RoleDrift) -> str | None:
    """The final status of the reconciler's deployment for ``drift``, once it has one."""
    if drift.deployment_id is None:
        return None
    status = Deployment.objects.filter(pk=drift.deployment_id).values_list("status", flat=True).first()
    return status if status in FINISHED else None


def _drift_fix_failed(*, drift: RoleDrift, node: Node) -> None:
    """The reconciler's deployment ended and the drift is still there: an operator must look, once."""
    if drift.event_id is None or (status := _fix_ended(drift)) is None:
        return
    if NodeEvent.objects.filter(pk=drift.event_id, needs_attention=True).exists():
        return
    with transaction.atomic():
        event = node_event(
            node=node,
            kind=EventKind.ROLE_DRIFT,
            severity=Severity.WARNING,
            message=(
                f"{drift.role.name} still drifts after its deployment ended {status}:"
                f" {drift_summary(drift.details)}"
            ),
            actor=ACTOR,
            data={
                "role": drift.role.name,
                "drift": drift.details,
                "drift_id": drift.pk,
                "deployment": str(drift.deployment_id),
            },
            needs_attention=True,
        )
        RoleDrift.objects.filter(pk=drift.pk).update(event=event)
        drift.event = event


# --------------------------------------------------------------------------------------------------
# Scheduled check-mode runs


def check_runs_schedule(*, now: datetime | None = None) -> list[Deployment]:
    """A check-mode run (``--check --diff``) for each online node over the roles deployed there, once per
    ``DEPLOYMENTS_CHECK_RUN_INTERVAL_SECONDS`` (the idempotency key names the interval); nodes with a
    run queued or running are left for the next interval."""
    now = now or timezone.now()
    period = int(now.timestamp()) // max(1, settings.DEPLOYMENTS_CHECK_RUN_INTERVAL_SECONDS)
    busy = set(DeploymentRun.objects.filter(status__in=IN_FLIGHT).values_list("deployment__nodes", flat=True))
    nodes = [
        node
        for node in Node.objects.filter(state=NodeState.ONLINE).exclude(host_key="")
        if node.pk not in busy
    ]
    last_deployed = _last_deployed([node.pk for node in nodes])
    created = []
    for node in nodes:
        roles = sorted(
            role
            for role in node.node_roles.values_list("role__name", flat=True)
            if (node.pk, role) in last_deployed and services.role_is_deployable(role)
        )
        if not roles:
            continue
        try:
            deployment, made = actions.action_deployment_create(
                node=node,
                roles=dependency_order(roles),
                kind=DeploymentAction.Kind.CHECK,
                requested_by=ACTOR,
                idempotency_key=f"check:{node.pk}:{period}",
            )
        except APIException as exc:
            logger.warning("reconciler: no check run on %s: %s", node.name, exc.detail)
            continue
        if made:
            created.append(deployment)
    return created
