"""Deployments that run an action instead of a deploy of their roles: a service action through
``service.yml`` (the remediator's restarts) and check-mode runs (``--check --diff``, the reconciler's).

Such a deployment is an ordinary deployment (one node, its roles, a run claimed, leased, fenced and
streamed like any other) with a ``DeploymentAction`` row; the executor asks ``playbook_run_with_action``
how the action changes what Ansible runs, and hands each event batch to ``run_diffs_store``, which keeps
the diffs of check-mode runs as ``RunDiff`` rows.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from rest_framework.exceptions import ValidationError

from service_kit.errors import Conflict
from slm_project.deployments import services
from slm_project.deployments.choices import RunStatus, Strategy
from slm_project.deployments.constants import RUN_TIMEOUT_SECONDS
from slm_project.deployments.models import Deployment, DeploymentAction, DeploymentRun, RunDiff
from slm_project.fleet.models import Node
from slm_project.fleet.registry import ROLES, dependency_order

if TYPE_CHECKING:
    from slm_project.deployments.runners.ansible import PlaybookRun

logger = logging.getLogger(__name__)

# A service action or a check run is short; a hung one must not hold its node's lock for half an hour.
ACTION_TIMEOUT_SECONDS = min(10 * 60, RUN_TIMEOUT_SECONDS)


def _deployable_node(node: Node) -> Node:
    if node.state in services.UNDEPLOYABLE_STATES:
        raise Conflict(f"Cannot run on {node.name}: it is {node.state}.")
    if not node.host_key:
        raise Conflict(f"No pinned host key for {node.name}: enroll the node first.")
    return node


def action_deployment_create(
    *,
    node: Node,
    roles: list[str],
    kind: str,
    requested_by: str,
    idempotency_key: str,
    service_name: str = "",
    service_action: str = "",
) -> tuple[Deployment, bool]:
    """Record a one-node deployment that runs ``kind`` (``DeploymentAction.Kind``), with its first run
    queued and enqueued; ``(deployment, created)``. The same ``idempotency_key`` returns the deployment
    made with it before. Unlike ``services.deployment_create`` it assigns no roles: it acts on roles the
    node has."""
    existing = Deployment.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        return existing, False
    unknown = sorted(set(roles) - ROLES.keys())
    if not roles or unknown:
        raise ValidationError({"roles": [f"Unknown roles: {', '.join(unknown) or '(none given)'}."]})
    if kind == DeploymentAction.Kind.SERVICE:
        allowed = {name for role in roles for name in ROLES[role].services}
        if service_name not in allowed or service_action not in DeploymentAction.ServiceAction.values:
            raise ValidationError(
                {"service": [f"{service_action!r} of {service_name!r} is not an action on {roles}."]}
            )
    _deployable_node(node)
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                roles=dependency_order(list(dict.fromkeys(roles))),
                strategy=Strategy.ALL_AT_ONCE,
                requested_by=requested_by,
                idempotency_key=idempotency_key,
            )
            deployment.nodes.set([node])
            DeploymentAction.objects.create(
                deployment=deployment, kind=kind, service_name=service_name, service_action=service_action
            )
            run = DeploymentRun.objects.create(deployment=deployment, timeout_seconds=ACTION_TIMEOUT_SECONDS)
            services.enqueue_run(run)
    except IntegrityError:
        # A concurrent request with the same key committed first.
        return Deployment.objects.get(idempotency_key=idempotency_key), False
    logger.info("%s deployment %s on %s requested by %s", kind, deployment.pk, node.name, requested_by)
    return deployment, True


def playbook_run_with_action(spec: PlaybookRun, *, deployment: Deployment) -> PlaybookRun:
    """``spec`` (a deploy of the deployment's roles) changed by the deployment's action, if it has one."""
    action = DeploymentAction.objects.filter(deployment=deployment).first()
    if action is None:
        return spec
    return dataclasses.replace(spec, **action.playbook_options())


def run_diffs_store(*, lease: services.Lease, records: list[dict[str, Any]]) -> int:
    """Keep the diffs among a batch of a run's event records (only ``--diff`` runs have any), fenced
    like the events: a writer that lost the run writes nothing."""
    diffs = [record for record in records if "diff" in record and record.get("host")]
    if not diffs:
        return 0
    with transaction.atomic():
        held = DeploymentRun.objects.select_for_update().filter(
            pk=lease.run_id, fencing_token=lease.token, status=RunStatus.RUNNING
        )
        if not held.exists():
            raise services.LeaseLost(f"run {lease.run_id}: fencing token {lease.token} is no longer valid")
        RunDiff.objects.bulk_create(
            [
                RunDiff(
                    run_id=lease.run_id,
                    counter=record["counter"],
                    host=record["host"],
                    role=record.get("role", ""),
                    task=record["task"],
                    # Ansible reports a file's diff when the task changes it (in check mode: would).
                    changed=True,
                    diff=record["diff"],
                )
                for record in diffs
            ],
            ignore_conflicts=True,
        )
    return len(diffs)
