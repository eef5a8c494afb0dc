"""Retention of deployment events (beat, ``deployments.events_prune``).

The events of runs that ended more than ``DEPLOYMENTS_EVENT_RETENTION_DAYS`` ago are deleted run by run,
in ranges of the run's counter of at most ``DEPLOYMENTS_EVENT_DELETE_BATCH`` rows: each ``DELETE`` walks
the unique (run, counter) index, commits on its own and holds its row locks only for its own rows, so
a run being written or read now is never blocked behind one big statement. The run row stays with its
counts (``events_emitted``, ``events_stored``), status, reason and per-host stats; so do the diffs of
check-mode runs (``RunDiff``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Exists, Max, OuterRef
from django.utils import timezone

from slm_project.deployments.models import DeploymentEvent, DeploymentRun

logger = logging.getLogger(__name__)


@dataclass
class PruneResult:
    runs: int = 0
    events: int = 0
    statements: int = 0


def deployment_events_prune(
    *, now: datetime | None = None, retention_days: int | None = None, batch_size: int | None = None
) -> PruneResult:
    """Delete the events of runs that finished before the cutoff (see the module docstring)."""
    now = now or timezone.now()
    days = settings.DEPLOYMENTS_EVENT_RETENTION_DAYS if retention_days is None else retention_days
    batch = max(1, batch_size or settings.DEPLOYMENTS_EVENT_DELETE_BATCH)
    cutoff = now - timedelta(days=days)
    result = PruneResult()
    has_events = DeploymentEvent.objects.filter(run=OuterRef("pk"))
    old_runs = (
        DeploymentRun.objects.filter(finished_at__lt=cutoff)
        .filter(Exists(has_events))
        .order_by("finished_at")
        .values_list("pk", flat=True)
    )
    for run_id in list(old_runs):
        highest = DeploymentEvent.objects.filter(run_id=run_id).aggregate(Max("counter"))["counter__max"] or 0
        low = 0
        while low < highest:
            # No signals or cascades hang off events: this is one DELETE … WHERE run_id = … AND counter
            # in (low, low + batch], in its own transaction.
            deleted, _ = DeploymentEvent.objects.filter(
                run_id=run_id, counter__gt=low, counter__lte=low + batch
            ).delete()
            result.events += deleted
            result.statements += 1
            low += batch
        result.runs += 1
    if result.runs:
        logger.info(
            "deployment events pruned: %d events of %d runs that ended before %s",
            result.events,
            result.runs,
            cutoff.isoformat(),
        )
    return result
