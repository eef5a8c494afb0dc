"""The remediator: a failed service on a healthy node is restarted (beat, ``deployments.remediate``).

A service qualifies when its agent reports it ``failed`` or ``stopped``, it belongs to a role assigned
to the node, and the node is ``online`` or ``degraded`` (never in maintenance, draining or any state an
operator owns) with no deployment run queued or running on it (a deployment may stop a service on
purpose), and it was not stopped by an operator through the SLM (a ``stop`` service action). The
restart is a deployment with a ``service`` action (``service.yml``, restart, the unit from the role's
allowlist), so it is claimed, leased, fenced, streamed and never overlaps another run on the node.

Attempts are kept in the database (``RemediationAttempt``, one per node and service): at most
``DEPLOYMENTS_REMEDIATION_MAX_ATTEMPTS`` restarts until the agent reports the service running again,
the wait after each one doubling from ``DEPLOYMENTS_REMEDIATION_COOLDOWN_SECONDS``. When they run out
and the service is still down, one ``remediation.exhausted`` node event needs an operator's attention;
the remediator then leaves the service alone until it runs again (which resets the count).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from rest_framework.exceptions import APIException

from slm_project.deployments import actions
from slm_project.deployments.choices import FINISHED, RunStatus
from slm_project.deployments.models import DeploymentAction, DeploymentRun, RemediationAttempt
from slm_project.fleet.choices import EventKind, NodeState, ServiceState, Severity
from slm_project.fleet.models import NodeRole, Service
from slm_project.fleet.services import node_event

logger = logging.getLogger(__name__)

ACTOR = "remediator"
HEALTHY_STATES = (NodeState.ONLINE, NodeState.DEGRADED)
DOWN_STATES = (ServiceState.FAILED, ServiceState.STOPPED)
IN_FLIGHT = (RunStatus.QUEUED, RunStatus.RUNNING)
Outcome = RemediationAttempt.Outcome


@dataclass
class RemediationResult:
    restarted: list[str] = field(default_factory=list)  # "service@node"
    escalated: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # cooling down, or a run in flight


def cooldown_after(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th restart before the next one (doubling each time)."""
    return timedelta(seconds=settings.DEPLOYMENTS_REMEDIATION_COOLDOWN_SECONDS * 2 ** max(0, attempts - 1))


def services_remediate(*, now: datetime | None = None) -> RemediationResult:
    """One pass of the remediator (see the module docstring); safe to run concurrently with itself (each
    service's attempt row is locked while it is decided on)."""
    now = now or timezone.now()
    result = RemediationResult()
    _recoveries_record(result=result, now=now)
    busy = set(DeploymentRun.objects.filter(status__in=IN_FLIGHT).values_list("deployment__nodes", flat=True))
    role_assigned = NodeRole.objects.filter(node=OuterRef("node"), role=OuterRef("role"))
    down = (
        Service.objects.filter(state__in=DOWN_STATES, role__isnull=False, node__state__in=HEALTHY_STATES)
        .filter(Exists(role_assigned))
        .select_related("node", "role")
        .order_by("node__name", "name")
    )
    down = list(down)
    stopped_on_purpose = _stopped_on_purpose(down)
    for service in down:
        label = f"{service.name}@{service.node.name}"
        if service.node_id in busy:
            result.waiting.append(label)
            continue
        if (service.node_id, service.name) in stopped_on_purpose and service.state == ServiceState.STOPPED:
            continue  # an operator stopped it through the SLM: not a failure
        outcome = _service_remediate(service=service, now=now)
        getattr(result, outcome).append(label)
    return result


def _stopped_on_purpose(down: list[Service]) -> set[tuple[Any, str]]:
    """The (node, service) pairs among ``down`` whose latest service action through the SLM was a
    successful stop."""
    if not down:
        return set()
    latest: dict[tuple[Any, str], str] = {}
    actions_done = (
        DeploymentAction.objects.filter(
            kind=DeploymentAction.Kind.SERVICE,
            deployment__status=RunStatus.SUCCEEDED,
            deployment__nodes__in={service.node_id for service in down},
            service_name__in={service.name for service in down},
        )
        .exclude(service_action=DeploymentAction.ServiceAction.STATUS)
        .order_by("deployment__created_at")
        .values_list("deployment__nodes", "service_name", "service_action")
    )
    for node_id, name, action in actions_done:
        latest[(node_id, name)] = action
    return {key for key, action in latest.items() if action == DeploymentAction.ServiceAction.STOP}


def _recoveries_record(*, result: RemediationResult, now: datetime) -> None:
    """Services the agent reports running again start from zero attempts."""
    running = Service.objects.filter(
        node=OuterRef("node"), name=OuterRef("service_name"), state=ServiceState.RUNNING
    )
    recovered = RemediationAttempt.objects.filter(Exists(running)).exclude(
        attempts=0, escalated_at__isnull=True
    )
    for attempt in recovered.select_related("node"):
        RemediationAttempt.objects.filter(pk=attempt.pk).update(
            attempts=0, escalated_at=None, next_allowed_at=None, outcome=Outcome.RECOVERED, updated_at=now
        )
        result.recovered.append(f"{attempt.service_name}@{attempt.node.name}")


@transaction.atomic
def _service_remediate(*, service: Service, now: datetime) -> str:
    """Decide on one down service: restart it, wait, or escalate. Returns the ``RemediationResult`` list
    it belongs in."""
    attempt, _ = RemediationAttempt.objects.get_or_create(node=service.node, service_name=service.name)
    attempt = RemediationAttempt.objects.select_for_update().get(pk=attempt.pk)
    if attempt.escalated_at is not None:
        return "waiting"  # an operator has it
    if attempt.outcome == Outcome.PENDING and attempt.deployment_id is not None:
        status = attempt.deployment.status
        if status not in FINISHED:
            return "waiting"
        attempt.outcome = Outcome.SUCCEEDED if status == RunStatus.SUCCEEDED else Outcome.FAILED
    if attempt.next_allowed_at is not None and now < attempt.next_allowed_at:
        attempt.save(update_fields=["outcome", "updated_at"])
        return "waiting"
    max_attempts = settings.DEPLOYMENTS_REMEDIATION_MAX_ATTEMPTS
    if attempt.attempts >= max_attempts:
        _escalate(attempt=attempt, service=service, now=now)
        return "escalated"
    try:
        deployment, _ = actions.action_deployment_create(
            node=service.node,
            roles=[service.role.name],
            kind=DeploymentAction.Kind.SERVICE,
            service_name=service.name,
            service_action=DeploymentAction.ServiceAction.RESTART,
            requested_by=ACTOR,
            idempotency_key=f"remediate:{attempt.pk}:{attempt.attempts + 1}:{int(now.timestamp())}",
        )
    except APIException as exc:
        logger.warning("remediator: cannot restart %s on %s: %s", service.name, service.node.name, exc.detail)
        attempt.save(update_fields=["outcome", "updated_at"])
        return "waiting"
    attempt.attempts += 1
    attempt.last_attempt_at = now
    attempt.next_allowed_at = now + cooldown_after(attempt.attempts)
    attempt.outcome = Outcome.PENDING
    attempt.deployment = deployment
    attempt.save()
    node_event(
        node=service.node,
        kind=EventKind.SERVICE_RESTART_REQUESTED,
        severity=Severity.WARNING,
        message=(
            f"Restarting {service.name} (attempt {attempt.attempts} of {max_attempts}):"
            f" the agent reports it {service.state}."
        ),
        actor=ACTOR,
        data=_event_data(attempt, service, deployment_id=str(deployment.pk)),
    )
    logger.info(
        "remediator: restarting %s on %s (attempt %d)", service.name, service.node.name, attempt.attempts
    )
    return "restarted"


def _escalate(*, attempt: RemediationAttempt, service: Service, now: datetime) -> None:
    attempt.escalated_at = now
    attempt.outcome = Outcome.ESCALATED
    attempt.save(update_fields=["escalated_at", "outcome", "updated_at"])
    node_event(
        node=service.node,
        kind=EventKind.REMEDIATION_EXHAUSTED,
        severity=Severity.CRITICAL,
        message=(
            f"{service.name} is still {service.state} after {attempt.attempts} restarts;"
            " the remediator stops trying until it runs again."
        ),
        actor=ACTOR,
        data=_event_data(attempt, service),
        needs_attention=True,
    )
    logger.warning("remediator: %s on %s escalated", service.name, service.node.name)


def _event_data(attempt: RemediationAttempt, service: Service, **extra: Any) -> dict[str, Any]:
    return {
        "service": service.name,
        "role": service.role.name,
        "attempts": attempt.attempts,
        "max_attempts": settings.DEPLOYMENTS_REMEDIATION_MAX_ATTEMPTS,
        **extra,
    }
