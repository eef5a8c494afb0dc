"""Reads of deployments."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from slm_project.deployments.models import Deployment, DeploymentEvent, DeploymentRun


def deployment_list() -> QuerySet[Deployment]:
    return Deployment.objects.prefetch_related("nodes")


def run_cancel_requested(*, run_id: Any) -> bool:
    return DeploymentRun.objects.filter(pk=run_id, cancel_requested_at__isnull=False).exists()


def run_events(*, run: DeploymentRun, after: int = 0, limit: int = 500) -> QuerySet[DeploymentEvent]:
    """The run's events after counter ``after``, in order (one index range scan)."""
    return DeploymentEvent.objects.filter(run=run, counter__gt=after).order_by("counter")[:limit]
