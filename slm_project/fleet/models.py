"""The fleet: nodes (Linux VMs), the role registry, what runs where, and each node's audited history."""

from __future__ import annotations

import uuid

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from slm_project.fleet.choices import EventKind, NodeRoleStatus, NodeState, ServiceState, Severity, Trigger

node_name_validator = RegexValidator(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
    "Use 1-63 lower-case letters, digits and hyphens, not starting or ending with a hyphen.",
)
ssh_user_validator = RegexValidator(
    r"^[a-z_][a-z0-9_-]{0,31}$", "Use a POSIX user name: lower-case letters, digits, '_' and '-'."
)


class Role(models.Model):
    """A VM role of the canonical registry (``fleet/registry.py``), mirrored here for foreign keys.

    Rows are written only by ``role_registry_sync``; editing them by hand would be undone.
    """

    name = models.CharField(max_length=50, unique=True)
    description = models.TextField(blank=True)
    services = models.JSONField(default=list)
    ports = models.JSONField(default=list)
    health_probe = models.JSONField(default=dict)
    depends_on = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="required_by")
    playbook = models.CharField(max_length=200)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Node(models.Model):
    """A managed Linux machine.

    Its ``state`` changes only through ``fleet.states.node_transition`` (which records who, why and
    when). ``host_key*`` is the pinned SSH host key: set once by an explicit, audited acceptance and
    verified on every later connection. ``pending_host_key*`` holds a key seen on first contact that
    waits for that acceptance. The agent token is stored as a SHA-256 hash only.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=63, unique=True, validators=[node_name_validator])
    address = models.CharField(max_length=253, help_text="IP address or DNS name")
    ssh_port = models.PositiveIntegerField(
        default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    ssh_user = models.CharField(max_length=32, default="autobot", validators=[ssh_user_validator])
    state = models.CharField(max_length=20, choices=NodeState.choices, default=NodeState.PENDING)
    state_reason = models.CharField(max_length=500, blank=True)
    state_changed_at = models.DateTimeField(auto_now_add=True)
    labels = models.JSONField(default=dict, blank=True)

    os = models.CharField(max_length=200, blank=True)
    kernel = models.CharField(max_length=200, blank=True)
    cpus = models.PositiveIntegerField(null=True, blank=True)
    memory_mb = models.PositiveIntegerField(null=True, blank=True)
    disk_gb = models.PositiveIntegerField(null=True, blank=True)

    host_key_type = models.CharField(max_length=50, blank=True)
    host_key = models.TextField(blank=True, help_text="Pinned public host key (base64)")
    host_key_fingerprint = models.CharField(max_length=100, blank=True)
    pending_host_key_type = models.CharField(max_length=50, blank=True)
    pending_host_key = models.TextField(blank=True)
    pending_host_key_fingerprint = models.CharField(max_length=100, blank=True)

    # A fingerprint the operator supplied with an enrollment request: pinned if the node presents it.
    supplied_host_key_fingerprint = models.CharField(max_length=100, blank=True)
    # A password the operator gave for bootstrapping; deleted once the SLM's own key is installed (or
    # the enrollment failed).
    bootstrap_credential = models.ForeignKey(
        "security.Credential", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The agent token sealed in the vault, for the slm_agent deployment to place on the node.
    agent_token_credential = models.ForeignKey(
        "security.Credential", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    agent_token_hash = models.CharField(max_length=64, blank=True)
    agent_version = models.CharField(max_length=50, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_sequence = models.BigIntegerField(default=-1)
    services_digest = models.CharField(max_length=64, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(ssh_port__gte=1) & Q(ssh_port__lte=65535), name="node_ssh_port_range"
            ),
            models.CheckConstraint(condition=Q(state__in=NodeState.values), name="node_state_valid"),
        ]
        indexes = [models.Index(fields=["state"])]

    def __str__(self) -> str:
        return self.name

    def roles_in_order(self) -> list[NodeRole]:
        """The node's roles (with their ``Role``) by role name: the list prefetched by
        ``selectors.node_list`` when there is one (a plain list: no queryset built per node), else one
        query."""
        prefetched = getattr(self, "prefetched_roles", None)
        if prefetched is not None:
            return prefetched
        return list(self.node_roles.select_related("role").order_by("role__name"))


class NodeRole(models.Model):
    """A role assigned to a node: the version we want there and the version its agent reports."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="node_roles")
    role = models.ForeignKey(Role, on_delete=models.PROTECT, related_name="node_roles")
    desired_version = models.CharField(max_length=100, blank=True)
    actual_version = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20, choices=NodeRoleStatus.choices, default=NodeRoleStatus.ASSIGNED)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["node__name", "role__name"]
        constraints = [models.UniqueConstraint(fields=["node", "role"], name="node_role_unique")]

    def __str__(self) -> str:
        return f"{self.node} · {self.role}"


class Service(models.Model):
    """A service on a node as its agent last reported it; ``discoverable`` ones are endpoints the
    business layer can find through ``/api/v1/discovery``."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="services")
    role = models.ForeignKey(Role, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=100)
    port = models.PositiveIntegerField(null=True, blank=True)
    protocol = models.CharField(max_length=10, default="tcp")
    state = models.CharField(max_length=20, choices=ServiceState.choices, default=ServiceState.UNKNOWN)
    discoverable = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["node__name", "name"]
        constraints = [models.UniqueConstraint(fields=["node", "name"], name="service_unique_per_node")]
        indexes = [models.Index(fields=["name", "discoverable"])]

    def __str__(self) -> str:
        return f"{self.name}@{self.node}"


class NodeEvent(models.Model):
    """The lifecycle feed of a node. ``needs_attention`` events stay on the fleet overview until an
    operator acknowledges them (a changed host key, an enrollment failure …)."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=50, choices=EventKind.choices)
    severity = models.CharField(max_length=10, choices=Severity.choices, default=Severity.INFO)
    message = models.CharField(max_length=1000)
    data = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=150, blank=True)
    needs_attention = models.BooleanField(default=False)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["node", "-created_at"]),
            models.Index(fields=["needs_attention", "acknowledged_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.node}: {self.kind}"


class NodeStateTransition(models.Model):
    """One audited state change: from, to, what triggered it, who, why."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=20, choices=NodeState.choices)
    to_state = models.CharField(max_length=20, choices=NodeState.choices)
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    actor = models.CharField(max_length=150)
    reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["node", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.node}: {self.from_state} → {self.to_state}"


class HeartbeatSample(models.Model):
    """One heartbeat's metrics, kept raw for a day (charts of the last hours), then rolled up."""

    # No index of its own: the unique (node, sequence) index serves every lookup by node, and each
    # index is one more write per heartbeat.
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="samples", db_index=False)
    sequence = models.BigIntegerField()
    sent_at = models.DateTimeField()
    received_at = models.DateTimeField()
    cpu_percent = models.FloatField()
    memory_percent = models.FloatField()
    disk_percent = models.FloatField()
    load_1m = models.FloatField()
    uptime_seconds = models.BigIntegerField()

    class Meta:
        ordering = ["node", "sequence"]
        constraints = [models.UniqueConstraint(fields=["node", "sequence"], name="sample_sequence_unique")]
        indexes = [models.Index(fields=["node", "sent_at"]), models.Index(fields=["received_at"])]

    def __str__(self) -> str:
        return f"{self.node} #{self.sequence}"


class MetricRollup(models.Model):
    """Aggregated samples of one node over a bucket (5 minutes or 1 hour) for long chart windows."""

    class Resolution(models.TextChoices):
        FIVE_MINUTES = "5m"
        ONE_HOUR = "1h"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="rollups")
    resolution = models.CharField(max_length=3, choices=Resolution.choices)
    bucket_start = models.DateTimeField()
    samples = models.PositiveIntegerField()
    cpu_avg = models.FloatField()
    cpu_max = models.FloatField()
    memory_avg = models.FloatField()
    memory_max = models.FloatField()
    disk_max = models.FloatField()
    load_avg = models.FloatField()

    class Meta:
        ordering = ["node", "resolution", "bucket_start"]
        indexes = [models.Index(fields=["resolution", "bucket_start"])]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "resolution", "bucket_start"], name="rollup_bucket_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.node} {self.resolution} {self.bucket_start:%Y-%m-%d %H:%M}"
