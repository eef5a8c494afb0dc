"""Test data for the fleet, made through the real service functions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from slm_project.fleet import services
from slm_project.fleet.models import Node

_names = itertools.count(1)


def make_node(**overrides: Any) -> Node:
    values = {"name": f"node-{next(_names)}", "address": "192.0.2.10", "actor": "user:test"}
    values.update(overrides)
    return services.node_create(**values)


def heartbeat(sequence: int = 0, **overrides: Any) -> dict[str, Any]:
    payload = {
        "sequence": sequence,
        "sent_at": datetime.now(UTC),
        "agent_version": "1.0.0",
        "cpu_percent": 12.5,
        "memory_percent": 40.0,
        "disk_percent": 55.0,
        "load_1m": 0.5,
        "load_5m": 0.4,
        "load_15m": 0.3,
        "uptime_seconds": 3600,
        "services": [{"name": "ollama", "state": "running", "port": 11434, "protocol": "tcp"}],
        "listening_ports": [22, 11434],
        "roles": [{"role": "llm", "running": True, "version": "0.5.1"}],
    }
    payload.update(overrides)
    return payload


def heartbeat_json(sequence: int = 0, **overrides: Any) -> dict[str, Any]:
    payload = heartbeat(sequence, **overrides)
    payload["sent_at"] = payload["sent_at"].isoformat()
    return payload
