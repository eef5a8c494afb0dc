"""Deployment schemas: a deployment (roles onto nodes), its runs (one per attempt) and a run's Ansible
events, paged by counter. The SLM's output serializers match these field for field (contract tests hold
it); ``DeploymentRequest`` is what a caller sends to ask for one."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import Field

from shared_contracts.schemas.common import ContractModel

# Limits the SLM enforces too; a client that checks them first fails before a request is made.
IDEMPOTENCY_KEY_MAX_LENGTH = 100
EVENTS_PAGE_MAX = 1000


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"
    LOST = "lost"


FINISHED_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.TIMED_OUT, RunStatus.LOST}
)
# A deployment whose latest run ended like this may be retried (a new attempt); a succeeded one may not.
RETRYABLE_STATUSES = frozenset({RunStatus.FAILED, RunStatus.CANCELED, RunStatus.TIMED_OUT, RunStatus.LOST})


class Strategy(StrEnum):
    ALL_AT_ONCE = "all_at_once"
    ROLLING = "rolling"
    DEPENDENCY_ORDER = "dependency_order"


ExtraVarValue = str | int | float | bool


class DeploymentRequest(ContractModel):
    """``POST /api/v1/deployments``. ``nodes`` are node ids; ``extra_vars`` only variables of the roles'
    allowlists (anything else is refused); the same ``idempotency_key`` returns the same deployment."""

    nodes: list[UUID] = Field(min_length=1)
    roles: list[str] = Field(min_length=1)
    strategy: str = Strategy.ALL_AT_ONCE
    strategy_options: dict[str, ExtraVarValue] = Field(default_factory=dict)
    extra_vars: dict[str, ExtraVarValue] = Field(default_factory=dict)
    idempotency_key: str = Field(default="", max_length=IDEMPOTENCY_KEY_MAX_LENGTH)


class DeploymentTarget(ContractModel):
    id: UUID
    name: str


class HostCounts(ContractModel):
    """Ansible's recap for one host (``changed`` tasks are also counted in ``ok``)."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


class DeploymentRun(ContractModel):
    """One attempt. ``events_emitted`` is what Ansible produced, ``events_stored`` the rows the SLM
    kept: equal for a complete run. ``host_stats`` is filled when the run ends."""

    id: UUID
    deployment_id: UUID
    attempt: int = Field(ge=1)
    status: RunStatus
    status_reason: str = ""
    rc: int | None = None
    host_stats: dict[str, HostCounts] = Field(default_factory=dict)
    events_emitted: int = Field(ge=0)
    events_stored: int = Field(ge=0)
    timeout_seconds: int
    cancel_requested_at: datetime | None = None
    cancel_requested_by: str = ""
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Deployment(ContractModel):
    """``status`` is the status of the latest run; ``attempts`` the number of runs so far.
    ``strategy_options``: a ``rolling`` deployment's ``batch_size`` or ``batch_percent``."""

    id: UUID
    nodes: list[DeploymentTarget]
    roles: list[str]
    strategy: str
    strategy_options: dict[str, ExtraVarValue] = Field(default_factory=dict)
    extra_vars: dict[str, ExtraVarValue] = Field(default_factory=dict)
    requested_by: str
    idempotency_key: str = ""
    status: RunStatus
    attempts: int = Field(ge=0)
    created_at: datetime
    updated_at: datetime


class DeploymentDetail(Deployment):
    runs: list[DeploymentRun]


class DeploymentEvent(ContractModel):
    counter: int = Field(ge=1)
    uuid: UUID
    parent_uuid: UUID | None = None
    event: str
    host: str = ""
    play: str = ""
    task: str = ""
    changed: bool = False
    failed: bool = False
    duration: float | None = None
    stdout: str = ""
    result: dict[str, object] = Field(default_factory=dict)
    created_at: datetime


class DeploymentEventPage(ContractModel):
    """Events of one run with ``counter > after``, in counter order, at most ``limit`` of them.

    Tail a run by asking again with ``after=next_after`` until ``finished`` is true and ``has_more``
    false; ``next_after`` equals ``after`` when nothing new was stored.
    """

    deployment_id: UUID
    run_id: UUID
    attempt: int
    run_status: RunStatus
    finished: bool
    after: int = Field(ge=0)
    next_after: int = Field(ge=0)
    has_more: bool
    events_emitted: int
    events_stored: int
    results: list[DeploymentEvent]
