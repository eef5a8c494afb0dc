"""The maintenance policy: may a deployment run start now?

``services.deployment_run_claim`` asks ``may_start`` before it takes a run. A refusal keeps the run
``queued`` with the decision's reason on the run row, and the run is asked about again at ``retry_at`` (or
a little later). Maintenance windows come in a later issue; until then every run may start. Replace
``may_start`` (one function, one place) when they exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slm_project.deployments.models import Deployment


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    # When to ask again (None: the executor's default delay).
    retry_at: datetime | None = None


ALLOW = Decision(allowed=True)


def may_start(deployment: Deployment) -> Decision:
    """Whether a run of ``deployment`` may start now (always, until maintenance windows exist)."""
    return ALLOW
