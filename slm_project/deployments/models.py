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
    status of the latest run (``failed`` when a lost run had no attempts left). The same non-empty
    ``idempotency_key`` always names the same deployment. A ``rolling`` deployment has exactly one of
    ``batch_size`` (nodes per batch) and ``batch_percent`` (of the nodes, rounded up); others have neither.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    nodes = models.ManyToManyField("fleet.Node", related_name="deployments")
    roles = models.JSONField(default=list)
    strategy = models.CharField(max_length=20, choices=Strategy.choices, default=Strategy.ALL_AT_ONCE)
    batch_size = models.PositiveIntegerField(null=True, blank=True)
    batch_percent = models.PositiveSmallIntegerField(null=True, blank=True)
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
            models.CheckConstraint(
                condition=(
                    Q(strategy=Strategy.ROLLING)
                    & (
                        Q(batch_size__gte=1, batch_percent__isnull=True)
                        | Q(batch_size__isnull=True, batch_percent__gte=1, batch_percent__lte=100)
                    )
                )
                | (~Q(strategy=Strategy.ROLLING) & Q(batch_size__isnull=True, batch_percent__isnull=True)),
                name="deployment_rolling_batch_valid",
            ),
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

    ``steps`` is the run's plan, fixed when it is claimed (one step for ``all_at_once``, one per batch or
    per role for the other strategies), each with its status and reason: ``[{"name", "roles", "nodes",
    "node_ids", "health_check", "status", "reason", "started_at", "finished_at"}]``. ``executor_host``,
    ``executor_pid`` and ``work_dir`` say where the executor runs and which directory holds the run's
    files; ``ansible_pgid`` is the process group of ``ansible-playbook`` (it runs in a session of its
    own). After a worker is killed they let the reaper, or any later executor on that host, kill the
    orphaned Ansible processes and delete the key material (``orphans_cleared_at``).
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
    steps = models.JSONField(default=list, blank=True)
    executor_host = models.CharField(max_length=253, blank=True)
    executor_pid = models.PositiveIntegerField(null=True, blank=True)
    work_dir = models.CharField(max_length=500, blank=True)
    ansible_pgid = models.PositiveIntegerField(null=True, blank=True)
    orphans_cleared_at = models.DateTimeField(null=True, blank=True)
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


class DeploymentNodeLock(models.Model):
    """A node held by a running deployment run. The node is the primary key, so two runs that touch the
    same node never run at the same time: a run takes the locks of all its nodes in the transaction that
    claims it (or stays queued), and gives them up when it ends. A lost run keeps them until its orphaned
    Ansible processes are known to be dead (see ``DeploymentRun``)."""

    node = models.OneToOneField(
        "fleet.Node", primary_key=True, on_delete=models.CASCADE, related_name="deployment_lock"
    )
    run = models.ForeignKey(DeploymentRun, on_delete=models.CASCADE, related_name="node_locks")
    acquired_at = models.DateTimeField()

    class Meta:
        ordering = ["node"]

    def __str__(self) -> str:
        return f"{self.node_id} held by {self.run_id}"


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


# --------------------------------------------------------------------------------------------------
# Reconciliation and remediation (``reconcile.py``, ``remediation.py``)


class DeploymentAction(models.Model):
    """What a deployment runs when it is not a plain deploy of its roles (a deployment without one
    deploys): a service action through ``service.yml`` (the remediator's restarts), a check-mode run
    of its roles (``--check --diff``: nothing changes on the nodes; what would change is kept as
    ``RunDiff`` rows), or a step of the node lifecycle (``fleet/lifecycle.py``): ``enroll`` makes a
    freshly enrolled node ready (``enroll.yml``: baseline and the node agent), ``decommission`` removes
    every AutoBot service and file from the node and then the SLM's SSH key (``decommission.yml``), its
    data directories too when ``purge_data`` is set. ``reason`` is the operator's reason for the
    decommission, recorded on the node's transition when the run succeeds."""

    class Kind(models.TextChoices):
        SERVICE = "service"
        CHECK = "check"
        ENROLL = "enroll"
        DECOMMISSION = "decommission"

    class ServiceAction(models.TextChoices):
        START = "start"
        STOP = "stop"
        RESTART = "restart"
        STATUS = "status"

    # Kinds whose playbook installs nothing, so a run of them needs no application bundle.
    INSTALLS_NOTHING = (Kind.SERVICE, Kind.DECOMMISSION)

    deployment = models.OneToOneField(
        Deployment, on_delete=models.CASCADE, primary_key=True, related_name="action"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    service_name = models.CharField(max_length=100, blank=True)
    service_action = models.CharField(max_length=20, choices=ServiceAction.choices, blank=True)
    purge_data = models.BooleanField(default=False)
    reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["deployment"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(kind="service", service_action__in=["start", "stop", "restart", "status"])
                    & ~Q(service_name="")
                    & Q(purge_data=False)
                )
                | Q(kind__in=["check", "enroll"], service_name="", service_action="", purge_data=False)
                | Q(kind="decommission", service_name="", service_action=""),
                name="deployment_action_valid",
            )
        ]

    def __str__(self) -> str:
        if self.kind == self.Kind.SERVICE:
            return f"{self.service_action} {self.service_name}"
        if self.kind == self.Kind.DECOMMISSION and self.purge_data:
            return "decommission (purge data)"
        return str(self.kind)

    def playbook_options(self, *, slm_public_key: str = "") -> dict[str, object]:
        """How this action changes the deployment's ``runners.ansible.PlaybookRun``. A decommission
        needs the SLM's public key (``slm_public_key``): it is the line removed from authorized_keys."""
        if self.kind == self.Kind.SERVICE:
            return {
                "playbook": "service.yml",
                "extra_vars": {"service_name": self.service_name, "service_action": self.service_action},
            }
        if self.kind == self.Kind.ENROLL:
            return {"playbook": "enroll.yml"}
        if self.kind == self.Kind.DECOMMISSION:
            return {
                "playbook": "decommission.yml",
                "extra_vars": {"decommission_purge_data": self.purge_data, "slm_public_key": slm_public_key},
                # It removes what the roles installed: none of their secrets (the agent token, the Redis
                # password) goes to the node.
                "secret_extra_vars": {},
            }
        return {"check": True, "diff": True}


class RunDiff(models.Model):
    """What one task of a check-mode run would change on one host, as unified diff text redacted like
    the run's events. Kept after the run's events are pruned. A task whose output is secret (``no_log``)
    shows only that it would change."""

    run = models.ForeignKey(DeploymentRun, on_delete=models.CASCADE, related_name="diffs")
    counter = models.PositiveIntegerField(help_text="The counter of the task's event in the run")
    host = models.CharField(max_length=253)
    role = models.CharField(max_length=100, blank=True, help_text="The Ansible role of the task")
    task = models.CharField(max_length=500, blank=True)
    changed = models.BooleanField(default=False)
    diff = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "counter"]
        constraints = [models.UniqueConstraint(fields=["run", "counter"], name="run_diff_counter_unique")]

    def __str__(self) -> str:
        return f"{self.run} {self.host}: {self.task}"


class RoleDrift(models.Model):
    """A difference between what a node should run (its roles, their desired versions, their last
    successful deployment) and what its agent and the last check-mode run report.

    At most one open drift (``resolved_at`` empty) per node and role: the reconciler updates it while
    the drift lasts and resolves it when it is gone. ``details`` says what differs, ``fingerprint`` is
    its digest (a changed drift is announced again). ``event`` is the node event that announced it;
    ``deployment`` the one the reconciler made to fix it, where the policy allows that.
    """

    node = models.ForeignKey("fleet.Node", on_delete=models.CASCADE, related_name="drifts")
    role = models.ForeignKey("fleet.Role", on_delete=models.PROTECT, related_name="+")
    details = models.JSONField(default=dict)
    fingerprint = models.CharField(max_length=64)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    event = models.ForeignKey(
        "fleet.NodeEvent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-first_seen_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "role"], condition=Q(resolved_at__isnull=True), name="role_drift_one_open"
            )
        ]

    def __str__(self) -> str:
        return f"{self.node_id} · {self.role_id}: {', '.join(sorted(self.details))}"


class RemediationAttempt(models.Model):
    """The remediator's memory of one service on one node: how often it restarted it since it last saw
    it running, when it may try again, how the last try ended. ``escalated_at`` is set once, when the
    attempts ran out and an operator was told; the remediator leaves the service alone from then on
    until it runs again."""

    class Outcome(models.TextChoices):
        PENDING = "pending"  # a restart run is queued or running
        SUCCEEDED = "succeeded"  # the restart run succeeded (the agent has yet to confirm)
        FAILED = "failed"
        RECOVERED = "recovered"  # the agent reports the service running again
        ESCALATED = "escalated"

    node = models.ForeignKey("fleet.Node", on_delete=models.CASCADE, related_name="remediations")
    service_name = models.CharField(max_length=100)
    attempts = models.PositiveIntegerField(default=0)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_allowed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, blank=True)
    escalated_at = models.DateTimeField(null=True, blank=True)
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["node", "service_name"]
        constraints = [
            models.UniqueConstraint(fields=["node", "service_name"], name="remediation_one_per_service")
        ]

    def __str__(self) -> str:
        return f"{self.service_name}@{self.node_id}: {self.attempts} attempts"
