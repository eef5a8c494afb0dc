"""Deployments that run an action instead of a deploy of their roles: a service action through
``service.yml`` (the remediator's restarts), check-mode runs (``--check --diff``, the reconciler's), and
the node lifecycle's runs (``enroll.yml`` after an enrollment, ``decommission.yml`` before a node is
decommissioned; see ``NodeLifecycleRuns``).

Such a deployment is an ordinary deployment (one node, its roles, a run claimed, leased, fenced and
streamed like any other) with a ``DeploymentAction`` row; the executor asks ``playbook_run_with_action``
how the action changes what Ansible runs, and hands each event batch to ``run_diffs_store``, which keeps
the diffs of check-mode runs as ``RunDiff`` rows.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from rest_framework.exceptions import ValidationError

from service_kit.errors import Conflict
from slm_project.deployments import services
from slm_project.deployments.choices import FINISHED, RunStatus, Strategy
from slm_project.deployments.constants import RUN_TIMEOUT_SECONDS
from slm_project.deployments.models import Deployment, DeploymentAction, DeploymentRun, RunDiff
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import EventKind, RoleName, Severity
from slm_project.fleet.enrollment import slm_identity
from slm_project.fleet.models import Node, NodeEvent
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
    purge_data: bool = False,
    reason: str = "",
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
            ordered = dependency_order(list(dict.fromkeys(roles)))
            deployment = Deployment.objects.create(
                roles=ordered,
                strategy=Strategy.ALL_AT_ONCE,
                # As the roles were deployed onto the node: a check or a restart acts on that.
                extra_vars=services.node_role_variables(node_id=node.pk, roles=ordered),
                requested_by=requested_by,
                idempotency_key=idempotency_key,
            )
            deployment.nodes.set([node])
            DeploymentAction.objects.create(
                deployment=deployment,
                kind=kind,
                service_name=service_name,
                service_action=service_action,
                purge_data=purge_data,
                reason=reason[:500],
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
    if action.kind == DeploymentAction.Kind.DECOMMISSION:
        options = action.playbook_options(slm_public_key=slm_identity().public_key)
        # The node's own secrets (its agent token) do not go to a node that is being cleared either.
        hosts = tuple(dataclasses.replace(host, secret_variables={}) for host in spec.hosts)
        return dataclasses.replace(spec, hosts=hosts, **options)
    return dataclasses.replace(spec, **action.playbook_options())


def installs_nothing(*, deployment: Deployment) -> bool:
    """Whether the deployment's playbook installs nothing (a service action, a decommission): its runs
    need no application bundle and do not hand the node agent its token."""
    return DeploymentAction.objects.filter(
        deployment=deployment, kind__in=DeploymentAction.INSTALLS_NOTHING
    ).exists()


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


# --------------------------------------------------------------------------------------------------
# The node lifecycle's runs (``fleet/lifecycle.py``)

LIFECYCLE_KINDS = (DeploymentAction.Kind.ENROLL, DeploymentAction.Kind.DECOMMISSION)


class NodeLifecycleRuns:
    """The deployments app's side of ``fleet.lifecycle.NodePlaybooks`` (registered by
    ``DeploymentsConfig.ready``): the playbook runs of the node lifecycle are one-node action
    deployments, so they are leased, fenced, streamed and never overlap another run on the node.

    - ``enroll``: once per enrollment (idempotency key ``enroll:<node>:<enrollment event>``), the node gets
      the ``slm-agent`` role and a run of ``enroll.yml`` (baseline and the node agent with its token), so a
      freshly enrolled node starts heartbeating without a separate deployment.
    - ``decommission``: one run of ``decommission.yml`` at a time per node; ``action_run_ended`` finishes
      the node's transition when it succeeds, or leaves the node as it was with an event saying why.
    """

    def enrollment_succeeded(self, *, node: Node, enrollment_event: NodeEvent) -> Deployment:
        if not settings.DEPLOYMENTS_SLM_URL:
            raise ValidationError(
                {"slm_url": ["SLM_PUBLIC_URL is not set: the agent would not know where to report."]}
            )
        current = list(node.node_roles.values_list("role__name", flat=True))
        fleet_services.node_roles_set(node=node, roles=sorted({*current, RoleName.SLM_AGENT}))
        deployment, _ = action_deployment_create(
            node=node,
            roles=[RoleName.SLM_AGENT],
            kind=DeploymentAction.Kind.ENROLL,
            requested_by=enrollment_event.actor or "enrollment",
            idempotency_key=f"enroll:{node.pk}:{enrollment_event.pk}",
        )
        return deployment

    def decommission_start(self, *, node: Node, actor: str, reason: str, purge_data: bool) -> Deployment:
        pending = (
            Deployment.objects.filter(nodes=node, action__kind=DeploymentAction.Kind.DECOMMISSION)
            .exclude(status__in=FINISHED)
            .first()
        )
        if pending is not None:
            raise Conflict(
                f"A decommission of {node.name} is {pending.status} already: deployment {pending.pk}."
            )
        # Its roles say what is removed; the playbook removes every AutoBot service it finds all the same.
        roles = list(node.node_roles.values_list("role__name", flat=True)) or [RoleName.SLM_AGENT]
        deployment, _ = action_deployment_create(
            node=node,
            roles=roles,
            kind=DeploymentAction.Kind.DECOMMISSION,
            requested_by=actor,
            idempotency_key=f"decommission:{node.pk}:{uuid.uuid4().hex}",
            purge_data=purge_data,
            reason=reason,
        )
        return deployment


def action_run_ended(*, run: DeploymentRun) -> None:
    """The node lifecycle's follow-up of a run that ended (called by the executor and the reaper): a
    decommission run that succeeded decommissions its node; one that ended otherwise, and an enroll run
    that did not succeed, leave the node as it is with an event that says why. A lost run that is tried
    again decides nothing yet."""
    action = (
        DeploymentAction.objects.filter(deployment_id=run.deployment_id, kind__in=LIFECYCLE_KINDS)
        .select_related("deployment")
        .first()
    )
    if action is None:
        return
    deployment = action.deployment
    if deployment.status not in FINISHED:
        return
    node = deployment.nodes.first()
    if node is None:
        return
    outcome = f"run {run.pk} {run.status}" + (f": {run.status_reason}" if run.status_reason else "")
    if action.kind == DeploymentAction.Kind.DECOMMISSION:
        if run.status == RunStatus.SUCCEEDED:
            fleet_services.node_decommission_complete(
                node=node, actor=deployment.requested_by, reason=action.reason, deployment_id=deployment.pk
            )
            return
        fleet_services.node_event(
            node=node,
            kind=EventKind.DECOMMISSION_FAILED,
            severity=Severity.CRITICAL,
            message=(
                f"Decommission not done: the cleanup {outcome}. The node was left {node.state} (some of its"
                " services may be removed already); fix the cause and decommission again, or decommission"
                " without cleanup if the machine is gone."
            ),
            actor=deployment.requested_by,
            data={"deployment": str(deployment.pk), "run": str(run.pk), "status": run.status},
            needs_attention=True,
        )
    elif run.status != RunStatus.SUCCEEDED:
        fleet_services.node_event(
            node=node,
            kind=EventKind.SETUP_FAILED,
            severity=Severity.WARNING,
            message=(
                f"The node is enrolled but not ready: enroll.yml {outcome}. Deploy the slm-agent role"
                " once the cause is fixed."
            ),
            actor=deployment.requested_by,
            data={"deployment": str(deployment.pk), "run": str(run.pk), "status": run.status},
            needs_attention=True,
        )
