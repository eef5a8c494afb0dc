"""The node output serializers are built by hand for speed; they must say exactly what DRF's own
field-by-field representation of the declared fields says (that is the published schema)."""

import pytest
from django.utils import timezone
from rest_framework import serializers

from slm_project.fleet import selectors, services
from slm_project.fleet.api.serializers import NodeDetailOutputSerializer, NodeOutputSerializer
from slm_project.fleet.models import Node, NodeRole
from tests.slm.fleet.factories import heartbeat, make_node

pytestmark = pytest.mark.django_db


def _drf_walk(serializer_class, node) -> dict:
    serializer = serializer_class(node)
    return serializers.Serializer.to_representation(serializer, node)


def _nodes() -> list[Node]:
    bare = make_node(name="bare-1", address="10.0.0.1", roles=[])
    full = make_node(name="full-1", address="fd00::7", roles=["llm", "slm-agent", "redis"])
    Node.objects.filter(pk=full.pk).update(
        state="online",
        state_reason="enrolled",
        labels={"rack": "b2", "tier": "gold"},
        os="Debian GNU/Linux 12",
        kernel="6.1.0-18-amd64",
        cpus=8,
        memory_mb=32000,
        disk_gb=512,
        host_key_fingerprint="SHA256:abc",
        pending_host_key_fingerprint="SHA256:def",
        host_key_type="ssh-ed25519",
    )
    NodeRole.objects.filter(node=full, role__name="llm").update(desired_version="0.5.1", status="active")
    full.refresh_from_db()
    services.heartbeat_ingest(node=full, heartbeat=heartbeat(1))
    Node.objects.filter(pk=bare.pk).update(last_heartbeat_at=timezone.now())
    return list(selectors.node_list())


@pytest.mark.parametrize("serializer_class", [NodeOutputSerializer, NodeDetailOutputSerializer])
def test_the_hand_built_representation_equals_drfs_own(serializer_class):
    nodes = _nodes()
    assert len(nodes) == 2
    for node in nodes:
        fast = serializer_class(node).data
        assert fast == _drf_walk(serializer_class, node)
        assert set(fast) == set(serializer_class().fields)
    full = next(node for node in nodes if node.name == "full-1")
    assert [role["role"] for role in serializer_class(full).data["roles"]] == ["llm", "redis", "slm-agent"]
