"""Test data for deployments, made through the real service functions."""

from __future__ import annotations

from typing import Any

from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import NodeState, Trigger
from slm_project.fleet.models import Node
from slm_project.fleet.states import node_transition
from tests.slm.fleet.factories import make_node

HOST_KEY = (
    "ssh-ed25519",
    "AAAAC3NzaC1lZDI1NTE5AAAAIBmW3ZtJ3gBu7d4Pwf4zV3kA7Q0a6bHcFqj5Oh1rGx1T",
    "SHA256:test",
)


def make_online_node(**overrides: Any) -> Node:
    """A node as enrollment leaves it (online, host key pinned), without any SSH."""
    node = make_node(**overrides)
    key_type, key, fingerprint = HOST_KEY
    fleet_services.node_host_key_capture(
        node=node, key_type=key_type, key_base64=key, fingerprint=fingerprint, actor="user:test"
    )
    node.refresh_from_db()
    node = fleet_services.node_host_key_accept(node=node, fingerprint=fingerprint, actor="user:test")
    for state in (NodeState.ENROLLING, NodeState.ONLINE):
        node = node_transition(node=node, to_state=state, trigger=Trigger.SYSTEM, actor="test")
    return node
