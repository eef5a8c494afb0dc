"""Periodic Celery tasks of deployments: the reconciler, check-mode runs, the remediator, event retention.

Beat starts them (``config/settings/integrations/schedule.py``); they take no arguments, re-read the
database and are idempotent, so a duplicate or overlapping delivery does no harm. The deployments they
make are executed by ``deployments.execute_run`` like any other.
"""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task

from slm_project.deployments import reconcile, remediation, retention


@shared_task(name="deployments.reconcile", soft_time_limit=240, time_limit=300)
def drift_reconcile() -> dict:
    return asdict(reconcile.drift_reconcile())


@shared_task(name="deployments.check_runs", soft_time_limit=240, time_limit=300)
def check_runs_schedule() -> list[str]:
    return [str(deployment.pk) for deployment in reconcile.check_runs_schedule()]


@shared_task(name="deployments.remediate", soft_time_limit=50, time_limit=60)
def services_remediate() -> dict:
    return asdict(remediation.services_remediate())


@shared_task(name="deployments.events_prune", soft_time_limit=3000, time_limit=3600)
def deployment_events_prune() -> dict:
    return asdict(retention.deployment_events_prune())
