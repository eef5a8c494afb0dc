"""How a deployment is split into the steps of a run (the plan), by its strategy.

- ``all_at_once``: one step, every role on every node (deploy.yml plays them in dependency order).
- ``dependency_order``: one step per role, in the registry's dependency order; each step deploys one role
  on every node, and the first failing step ends the run.
- ``rolling``: batches of nodes (``batch_size`` nodes, or ``batch_percent`` of them rounded up), in node
  name order; each batch gets every role and then a health check of those roles (their registry
  ``health_probe``), and the first failing batch ends the run, later batches untouched.

A plan is plain data (``Step``); ``steps_json`` is how a run row stores it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slm_project.deployments.choices import StepStatus, Strategy


@dataclass(frozen=True)
class Step:
    name: str
    roles: tuple[str, ...]
    nodes: tuple[str, ...]  # node names (the inventory names)
    node_ids: tuple[str, ...]
    health_check: bool = False


def batch_length(*, node_count: int, batch_size: int | None, batch_percent: int | None) -> int:
    if batch_size:
        return max(1, batch_size)
    if batch_percent:
        return max(1, math.ceil(node_count * batch_percent / 100))
    return max(1, node_count)


def plan(
    *,
    strategy: str,
    roles: Sequence[str],
    nodes: Sequence[tuple[str, str]],
    batch_size: int | None = None,
    batch_percent: int | None = None,
) -> list[Step]:
    """The steps for ``roles`` (in dependency order) on ``nodes`` (``(id, name)`` pairs)."""
    ordered = sorted(nodes, key=lambda node: node[1])
    ids = tuple(str(node_id) for node_id, _ in ordered)
    names = tuple(name for _, name in ordered)
    if strategy == Strategy.DEPENDENCY_ORDER:
        return [Step(name=f"role {role}", roles=(role,), nodes=names, node_ids=ids) for role in roles]
    if strategy == Strategy.ROLLING:
        size = batch_length(node_count=len(ordered), batch_size=batch_size, batch_percent=batch_percent)
        starts = range(0, len(ordered), size)
        return [
            Step(
                name=f"batch {number}/{len(starts)}",
                roles=tuple(roles),
                nodes=names[start : start + size],
                node_ids=ids[start : start + size],
                health_check=True,
            )
            for number, start in enumerate(starts, start=1)
        ]
    return [Step(name="all", roles=tuple(roles), nodes=names, node_ids=ids)]


def steps_json(steps: Sequence[Step]) -> list[dict[str, Any]]:
    return [
        {
            "name": step.name,
            "roles": list(step.roles),
            "nodes": list(step.nodes),
            "node_ids": list(step.node_ids),
            "health_check": step.health_check,
            "status": StepStatus.PENDING,
            "reason": "",
            "started_at": None,
            "finished_at": None,
        }
        for step in steps
    ]
