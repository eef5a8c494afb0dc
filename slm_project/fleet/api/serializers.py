"""Input and output serializers of the fleet API. Output serializers match
``shared_contracts.schemas.fleet`` field for field (tests/contracts hold them equal)."""

from rest_framework import serializers

from slm_project.fleet.choices import NodeRoleStatus, NodeState, ServiceState, Severity
from slm_project.fleet.models import node_name_validator, ssh_user_validator
from slm_project.fleet.registry import ROLES

# --- output ---------------------------------------------------------------------------------------


class NodeFactsSerializer(serializers.Serializer):
    os = serializers.CharField()
    kernel = serializers.CharField()
    cpus = serializers.IntegerField(allow_null=True)
    memory_mb = serializers.IntegerField(allow_null=True)
    disk_gb = serializers.IntegerField(allow_null=True)


class NodeRoleOutputSerializer(serializers.Serializer):
    role = serializers.CharField(source="role.name")
    desired_version = serializers.CharField()
    actual_version = serializers.CharField()
    status = serializers.ChoiceField(choices=NodeRoleStatus.choices)


class NodeOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    address = serializers.CharField()
    ssh_port = serializers.IntegerField()
    ssh_user = serializers.CharField()
    state = serializers.ChoiceField(choices=NodeState.choices)
    state_reason = serializers.CharField()
    labels = serializers.DictField(child=serializers.CharField())
    facts = NodeFactsSerializer(source="*")
    roles = NodeRoleOutputSerializer(source="roles_in_order", many=True)
    host_key_fingerprint = serializers.CharField()
    last_heartbeat_at = serializers.DateTimeField(allow_null=True)
    agent_version = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def to_representation(self, node) -> dict:
        """Built by hand: DRF's field-by-field walk, with its nested serializers per role, took ~0.4 ms a
        node, which made a page of 500 nodes miss its latency goal (bench/heartbeats.py). The fields
        declared above stay the published schema; a test holds this output equal to DRF's own."""
        return {
            "id": str(node.id),
            "name": node.name,
            "address": node.address,
            "ssh_port": node.ssh_port,
            "ssh_user": node.ssh_user,
            "state": node.state,
            "state_reason": node.state_reason,
            "labels": {key: str(value) for key, value in node.labels.items()},
            "facts": {
                "os": node.os,
                "kernel": node.kernel,
                "cpus": node.cpus,
                "memory_mb": node.memory_mb,
                "disk_gb": node.disk_gb,
            },
            "roles": [
                {
                    "role": node_role.role.name,
                    "desired_version": node_role.desired_version,
                    "actual_version": node_role.actual_version,
                    "status": node_role.status,
                }
                for node_role in node.roles_in_order()
            ],
            "host_key_fingerprint": node.host_key_fingerprint,
            "last_heartbeat_at": _DATETIME.to_representation(node.last_heartbeat_at)
            if node.last_heartbeat_at
            else None,
            "agent_version": node.agent_version,
            "created_at": _DATETIME.to_representation(node.created_at),
            "updated_at": _DATETIME.to_representation(node.updated_at),
        }


_DATETIME = serializers.DateTimeField()


class NodeDetailOutputSerializer(NodeOutputSerializer):
    """The detail view adds what an operator needs to accept a host key."""

    pending_host_key_fingerprint = serializers.CharField()
    host_key_type = serializers.CharField()

    def to_representation(self, node) -> dict:
        return {
            **super().to_representation(node),
            "pending_host_key_fingerprint": node.pending_host_key_fingerprint,
            "host_key_type": node.host_key_type,
        }


class RoleOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    services = serializers.ListField(child=serializers.CharField())
    ports = serializers.ListField(child=serializers.IntegerField())
    health_probe = serializers.DictField()
    depends_on = serializers.SerializerMethodField()
    playbook = serializers.CharField()

    def get_depends_on(self, role) -> list[str]:
        return list(ROLES[role.name].depends_on) if role.name in ROLES else []


class ServiceEndpointOutputSerializer(serializers.Serializer):
    service = serializers.CharField(source="name")
    node_id = serializers.UUIDField(source="node.id")
    node_name = serializers.CharField(source="node.name")
    address = serializers.CharField(source="node.address")
    port = serializers.IntegerField()
    protocol = serializers.CharField()
    state = serializers.ChoiceField(choices=ServiceState.choices)
    healthy = serializers.BooleanField()
    url = serializers.SerializerMethodField()

    def get_url(self, service) -> str:
        host = service.node.address
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return f"{service.protocol}://{host}:{service.port}"


class NodeEventOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    node_id = serializers.UUIDField()
    kind = serializers.CharField()
    severity = serializers.ChoiceField(choices=Severity.choices)
    message = serializers.CharField()
    data = serializers.DictField()
    actor = serializers.CharField()
    needs_attention = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class FleetSummaryOutputSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    by_state = serializers.DictField(child=serializers.IntegerField())
    by_role = serializers.DictField(child=serializers.IntegerField())
    needing_attention = serializers.ListField(child=serializers.UUIDField())


class HeartbeatAckOutputSerializer(serializers.Serializer):
    accepted = serializers.BooleanField()
    duplicate = serializers.BooleanField()
    sequence = serializers.IntegerField()
    state = serializers.ChoiceField(choices=NodeState.choices)


# --- input ----------------------------------------------------------------------------------------


class NodeCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=63, validators=[node_name_validator])
    address = serializers.CharField(max_length=253)
    ssh_port = serializers.IntegerField(min_value=1, max_value=65535, default=22)
    ssh_user = serializers.CharField(max_length=32, default="autobot", validators=[ssh_user_validator])
    labels = serializers.DictField(child=serializers.CharField(max_length=200), default=dict)
    roles = serializers.ListField(child=serializers.ChoiceField(choices=sorted(ROLES)), default=list)


class NodeUpdateInputSerializer(serializers.Serializer):
    address = serializers.CharField(max_length=253, required=False)
    ssh_port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    ssh_user = serializers.CharField(max_length=32, required=False, validators=[ssh_user_validator])
    labels = serializers.DictField(child=serializers.CharField(max_length=200), required=False)
    roles = serializers.ListField(child=serializers.ChoiceField(choices=sorted(ROLES)), required=False)


class ReasonInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class DecommissionInputSerializer(ReasonInputSerializer):
    confirm_name = serializers.CharField(max_length=63, help_text="The node's name, repeated to confirm.")
    cleanup = serializers.BooleanField(
        default=True,
        help_text=(
            "Remove AutoBot's services, files and the SLM's SSH key from the machine first"
            " (decommission.yml); the node is decommissioned when that run succeeds. Set false for a"
            " machine that is gone or unreachable: the node is decommissioned at once and the machine is"
            " left as it is."
        ),
    )
    purge_data = serializers.BooleanField(
        default=False, help_text="With cleanup: delete the services' data directories too (kept by default)."
    )


class AcceptHostKeyInputSerializer(serializers.Serializer):
    fingerprint = serializers.CharField(max_length=100)


class EnrollInputSerializer(serializers.Serializer):
    """A password is used once to install the SLM's key and then forgotten; it is write-only."""

    password = serializers.CharField(required=False, allow_blank=False, write_only=True, max_length=1024)
    host_key_fingerprint = serializers.CharField(required=False, max_length=100)
