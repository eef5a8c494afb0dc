"""Deployments: a request to put roles on nodes, its attempts (runs) and each run's Ansible events."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from slm_project.deployments.choices import RunStatus, Strategy
from slm_project.deployments.constants import IDEMPOTENCY_KEY_MAX_LENGTH


class Deployment(models.Model):
    """Roles onto nodes, as an operator (or API client) asked for them.

    ``roles`` are registry names in dependency order; ``extra_vars`` holds only variables of those roles'
    allowlists, never a secret (secrets are read from the vault when a run starts). ``status`` is the
    status of the latest run. The same non-empty ``idempotency_key`` always names the same deployment.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    nodes = models.ManyToManyField("fleet.Node", related_name="deployments")
    roles = models.JSONField(default=list)
    strategy = models.CharField(max_length=20, choices=Strategy.choices, default=Strategy.ALL_AT_ONCE)
    extra_vars = models.JSONField(default=dict, blank=True)
    requested_by = models.CharField(max_length=150)
    idempotency_key = models.CharField(max_length=IDEMPOTENCY_KEY_MAX_LENGTH, blank=True)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="deployment_idempotency_key_unique",
            ),
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="deployment_status_valid"),
        ]
        indexes = [models.Index(fields=["status", "-created_at"])]

    def __str__(self) -> str:
        return f"{', '.join(self.roles)} ({str(self.pk)[:8]})"


class DeploymentRun(models.Model):
    """One attempt at a deployment, executed by exactly one worker at a time.

    A worker owns a run through its lease (``lease_owner`` until ``lease_expires_at``) and the
    ``fencing_token`` it got when it claimed the run; every write of the executor is conditional on that
    token, so a worker that lost the run (its lease expired and the run was taken over or ended) can
    write nothing more. ``events_emitted`` counts the events Ansible produced, ``events_stored`` the rows
    written: equal for a complete run. ``host_stats`` holds Ansible's recap per host.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="runs")
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    status_reason = models.CharField(max_length=500, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    fencing_token = models.PositiveBigIntegerField(default=0)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.CharField(max_length=150, blank=True)
    timeout_seconds = models.PositiveIntegerField()
    rc = models.IntegerField(null=True, blank=True)
    host_stats = models.JSONField(default=dict, blank=True)
    events_emitted = models.PositiveIntegerField(default=0)
    events_stored = models.PositiveIntegerField(default=0)
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["deployment", "attempt"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "attempt"], name="deployment_run_attempt_unique"),
            models.CheckConstraint(
                condition=Q(status__in=RunStatus.values), name="deployment_run_status_valid"
            ),
            models.CheckConstraint(
                condition=~Q(status=RunStatus.RUNNING)
                | (~Q(lease_owner="") & Q(lease_expires_at__isnull=False)),
                name="deployment_run_running_has_lease",
            ),
        ]
        indexes = [models.Index(fields=["status", "lease_expires_at"])]

    def __str__(self) -> str:
        return f"{self.deployment} #{self.attempt}"


class DeploymentEvent(models.Model):
    """One Ansible event of a run, in the order Ansible emitted it (``counter``, from 1, no gaps).

    ``result`` is the module result with secrets redacted and bulky parts dropped; ``stdout`` is a slice
    of what Ansible printed for the event.
    """

    # The unique (run, counter) index serves every read (a run's events in order, paged by counter).
    run = models.ForeignKey(DeploymentRun, on_delete=models.CASCADE, related_name="events", db_index=False)
    counter = models.PositiveIntegerField()
    uuid = models.UUIDField()
    parent_uuid = models.UUIDField(null=True, blank=True)
    event = models.CharField(max_length=100)
    host = models.CharField(max_length=253, blank=True)
    play = models.CharField(max_length=500, blank=True)
    task = models.CharField(max_length=500, blank=True)
    changed = models.BooleanField(default=False)
    failed = models.BooleanField(default=False)
    duration = models.FloatField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["run", "counter"]
        constraints = [
            models.UniqueConstraint(fields=["run", "counter"], name="deployment_event_counter_unique")
        ]

    def __str__(self) -> str:
        return f"{self.run} #{self.counter} {self.event}"
