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
