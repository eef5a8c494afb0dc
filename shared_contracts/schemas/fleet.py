"""Fleet schemas: nodes, roles, service endpoints, node events, the fleet summary, and the heartbeat a
node agent sends. The SLM's output serializers match these field for field (contract tests hold it)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import Field

from shared_contracts.schemas.common import ContractModel


class NodeState(StrEnum):
    PENDING = "pending"
    ENROLLING = "enrolling"
    ONLINE = "online"
    DEGRADED = "degraded"
    ERROR = "error"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"
    RECOVERING = "recovering"
    DECOMMISSIONED = "decommissioned"


class RoleName(StrEnum):
    SLM_AGENT = "slm-agent"
    BACKEND = "backend"
    FRONTEND = "frontend"
    REDIS = "redis"
    AI_STACK = "ai-stack"
    NPU_WORKER = "npu-worker"
    BROWSER_WORKER = "browser-worker"
    LLM = "llm"


class ServiceState(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class NodeFacts(ContractModel):
    os: str = ""
    kernel: str = ""
    cpus: int | None = None
    memory_mb: int | None = None
    disk_gb: int | None = None


class NodeRoleInfo(ContractModel):
    role: str
    desired_version: str = ""
    actual_version: str = ""
    status: str


class Node(ContractModel):
    id: UUID
    name: str
    address: str
    ssh_port: int
    ssh_user: str
    state: NodeState
    state_reason: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    facts: NodeFacts
    roles: list[NodeRoleInfo] = Field(default_factory=list)
    host_key_fingerprint: str = ""
    last_heartbeat_at: datetime | None = None
    agent_version: str = ""
    created_at: datetime
    updated_at: datetime


class Role(ContractModel):
    name: str
    description: str
    services: list[str]
    ports: list[int]
    health_probe: dict[str, object]
    depends_on: list[str]
    playbook: str


class ServiceEndpoint(ContractModel):
    """A discoverable service on a node: where the business layer finds an LLM, Redis, the AI stack …"""

    service: str
    node_id: UUID
    node_name: str
    address: str
    port: int
    protocol: str
    state: ServiceState
    healthy: bool
    url: str


class NodeEvent(ContractModel):
    id: int
    node_id: UUID
    kind: str
    severity: Severity
    message: str
    data: dict[str, object] = Field(default_factory=dict)
    actor: str = ""
    needs_attention: bool = False
    created_at: datetime


class FleetSummary(ContractModel):
    total: int
    by_state: dict[str, int]
    by_role: dict[str, int]
    needing_attention: list[UUID]


# --- heartbeat: node agent → SLM -------------------------------------------------------------------


class HeartbeatService(ContractModel):
    name: str = Field(min_length=1, max_length=100)
    state: ServiceState
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: str = Field(default="tcp", max_length=10)


class RoleReport(ContractModel):
    role: str = Field(min_length=1, max_length=50)
    running: bool
    version: str = Field(default="", max_length=100)


class Heartbeat(ContractModel):
    """What the agent sends every 30 s. ``sequence`` increases per agent; the SLM stores each sequence
    once, so a heartbeat replayed from the agent's disk buffer is never counted twice."""

    sequence: int = Field(ge=0)
    sent_at: datetime
    agent_version: str = Field(max_length=50)
    cpu_percent: float = Field(ge=0, le=100)
    memory_percent: float = Field(ge=0, le=100)
    disk_percent: float = Field(ge=0, le=100)
    load_1m: float = Field(ge=0)
    load_5m: float = Field(ge=0)
    load_15m: float = Field(ge=0)
    uptime_seconds: int = Field(ge=0)
    services: list[HeartbeatService] = Field(default_factory=list, max_length=500)
    listening_ports: list[int] = Field(default_factory=list, max_length=2000)
    roles: list[RoleReport] = Field(default_factory=list, max_length=50)


class HeartbeatAck(ContractModel):
    accepted: bool
    duplicate: bool
    sequence: int
    state: NodeState
