"""Enums of the fleet, equal to ``shared_contracts.schemas.fleet`` (a test holds them equal)."""

from django.db import models


class NodeState(models.TextChoices):
    PENDING = "pending"
    ENROLLING = "enrolling"
    ONLINE = "online"
    DEGRADED = "degraded"
    ERROR = "error"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"
    RECOVERING = "recovering"
    DECOMMISSIONED = "decommissioned"


class RoleName(models.TextChoices):
    SLM_AGENT = "slm-agent"
    BACKEND = "backend"
    FRONTEND = "frontend"
    REDIS = "redis"
    AI_STACK = "ai-stack"
    NPU_WORKER = "npu-worker"
    BROWSER_WORKER = "browser-worker"
    LLM = "llm"


class NodeRoleStatus(models.TextChoices):
    ASSIGNED = "assigned"
    DEPLOYING = "deploying"
    ACTIVE = "active"
    FAILED = "failed"
    DRIFTED = "drifted"


class ServiceState(models.TextChoices):
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Severity(models.TextChoices):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class EventKind(models.TextChoices):
    CREATED = "node.created"
    STATE_CHANGED = "node.state_changed"
    ENROLLMENT_STARTED = "enrollment.started"
    ENROLLMENT_SUCCEEDED = "enrollment.succeeded"
    ENROLLMENT_FAILED = "enrollment.failed"
    HOST_KEY_CAPTURED = "host_key.captured"
    HOST_KEY_ACCEPTED = "host_key.accepted"
    HOST_KEY_CHANGED = "host_key.changed"
    CONNECTION_TESTED = "connection.tested"
    AGENT_TOKEN_ISSUED = "agent_token.issued"  # noqa: S105 - an event name
    HEARTBEAT_RESUMED = "heartbeat.resumed"
    SERVICE_CHANGED = "service.changed"
    # The reconciler and the remediator (deployments/reconcile.py, deployments/remediation.py).
    ROLE_DRIFT = "role.drift"
    ROLE_DRIFT_RESOLVED = "role.drift_resolved"
    SERVICE_RESTART_REQUESTED = "service.restart_requested"
    REMEDIATION_EXHAUSTED = "remediation.exhausted"
    # The node lifecycle's playbook runs (fleet/lifecycle.py): enroll.yml after an enrollment,
    # decommission.yml before a decommission.
    SETUP_STARTED = "setup.started"
    SETUP_FAILED = "setup.failed"
    DECOMMISSION_REQUESTED = "decommission.requested"
    DECOMMISSION_FAILED = "decommission.failed"


class Trigger(models.TextChoices):
    OPERATOR = "operator"
    ENROLLMENT = "enrollment"
    HEARTBEAT = "heartbeat"
    HEALTH = "health"
    SYSTEM = "system"
