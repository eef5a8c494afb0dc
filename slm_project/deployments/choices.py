"""Enums of deployments."""

from django.db import models


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"
    LOST = "lost"


FINISHED = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.TIMED_OUT, RunStatus.LOST}
)


class Strategy(models.TextChoices):
    # One run over every target, plays in the registry's dependency order (deploy.yml).
    ALL_AT_ONCE = "all_at_once"
    # Batches of nodes (a size or a percentage), each followed by a health check of its roles; the first
    # failing batch stops the deployment and later batches are not touched.
    ROLLING = "rolling"
    # One step per role, in the registry's dependency order; the first failing role stops the deployment.
    DEPENDENCY_ORDER = "dependency_order"


class StepStatus(models.TextChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"
    # Its executor died while it ran (the run is ``lost``).
    LOST = "lost"
    # Never started: an earlier step failed, or the run ended before it.
    SKIPPED = "skipped"
