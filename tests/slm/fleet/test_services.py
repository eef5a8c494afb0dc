"""Fleet services: registering nodes, roles, operator actions, host keys, agent tokens, heartbeats."""

from functools import partial

import pytest
from django.db import connection
from rest_framework.exceptions import ValidationError

from service_kit.errors import Conflict
from slm_project.access.tokens import token_matches
from slm_project.fleet import services
from slm_project.fleet.choices import NodeState
from slm_project.fleet.models import HeartbeatSample, Node, NodeEvent, NodeRole, Role, Service
from slm_project.fleet.registry import ROLES, dependency_order
from slm_project.fleet.states import TransitionNotAllowed
from tests.slm.fleet.factories import heartbeat, make_node

pytestmark = pytest.mark.django_db


def set_state(node: Node, state: str) -> Node:
    Node.objects.filter(pk=node.pk).update(state=state)
    node.refresh_from_db()
    return node


# --- registry --------------------------------------------------------------------------------------


def test_the_role_table_mirrors_the_registry_after_migrate():
    assert set(Role.objects.values_list("name", flat=True)) == set(ROLES)
    backend = Role.objects.get(name="backend")
    assert set(backend.depends_on.values_list("name", flat=True)) == set(ROLES["backend"].depends_on)


def test_dependency_order_puts_redis_before_ai_stack_before_backend():
    order = dependency_order(["backend", "ai-stack", "redis"])
    assert order.index("redis") < order.index("ai-stack") < order.index("backend")


# --- nodes -----------------------------------------------------------------------------------------


def test_a_node_is_registered_pending_with_roles_and_an_event():
    node = make_node(name="llm-1", address="10.0.0.5", roles=["llm", "slm-agent"])
    assert node.state == NodeState.PENDING
    assert set(NodeRole.objects.filter(node=node).values_list("role__name", flat=True)) == {
        "llm",
        "slm-agent",
    }
    assert NodeEvent.objects.filter(node=node, kind="node.created").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("address", "not an address!"),
        ("address", "300.1.1.1"),
        ("ssh_port", 0),
        ("ssh_port", 70000),
        ("name", "Bad_Name"),
        ("ssh_user", "root; rm -rf /"),
        ("roles", ["mainframe"]),
    ],
)
def test_invalid_values_are_refused_and_nothing_is_written(field, value):
    with pytest.raises(ValidationError) as excinfo:
        make_node(**{field: value})
    assert field in excinfo.value.detail
    assert not Node.objects.exists()


def test_a_duplicate_name_is_a_conflict_and_the_first_node_is_untouched():
    first = make_node(name="dup", address="10.0.0.1")
    with pytest.raises(Conflict):
        make_node(name="dup", address="10.0.0.2")
    assert Node.objects.get().address == first.address


def test_connection_settings_freeze_once_a_host_key_is_pinned():
    node = make_node()
    Node.objects.filter(pk=node.pk).update(host_key="AAAA", host_key_fingerprint="SHA256:x")
    node.refresh_from_db()
    with pytest.raises(Conflict, match="address"):
        services.node_update(node=node, actor="a", address="10.9.9.9")
    services.node_update(node=node, actor="a", labels={"rack": "r1"})
    assert Node.objects.get(pk=node.pk).labels == {"rack": "r1"}


def test_drain_then_resume_goes_through_maintenance_and_recovering():
    node = set_state(make_node(), NodeState.ONLINE)
    services.node_drain(node=node, actor="user:ops", reason="kernel update")
    assert Node.objects.get(pk=node.pk).state == NodeState.DRAINING
    services.node_resume(node=node, actor="user:ops")
    path = list(node.transitions.order_by("created_at", "id").values_list("to_state", flat=True))
    assert path == ["draining", "maintenance", "recovering", "online"]


def test_decommission_needs_the_name_and_ends_everything():
    node = set_state(make_node(name="old-box"), NodeState.ONLINE)
    token = services.node_agent_token_issue(node=node, actor="a")
    Service.objects.create(node=node, name="ollama", port=11434, discoverable=True, state="running")
    with pytest.raises(ValidationError):
        services.node_decommission(node=node, confirm_name="old-bo", actor="a")
    assert Node.objects.get(pk=node.pk).state == NodeState.ONLINE
    services.node_decommission(node=node, confirm_name="old-box", actor="a")
    node.refresh_from_db()
    assert node.state == NodeState.DECOMMISSIONED
    assert not token_matches(token, node.agent_token_hash)
    assert not Service.objects.filter(node=node, discoverable=True).exists()
    with pytest.raises(TransitionNotAllowed):
        services.node_resume(node=node, actor="a")


# --- host keys -------------------------------------------------------------------------------------


def test_a_captured_key_is_pinned_only_with_its_fingerprint():
    node = make_node()
    services.node_host_key_capture(
        node=node, key_type="ssh-ed25519", key_base64="AAAAkey", fingerprint="SHA256:abc", actor="t"
    )
    with pytest.raises(ValidationError):
        services.node_host_key_accept(node=node, fingerprint="SHA256:other", actor="user:ops")
    assert not Node.objects.get(pk=node.pk).host_key
    services.node_host_key_accept(node=node, fingerprint="SHA256:abc", actor="user:ops")
    node.refresh_from_db()
    assert (node.host_key, node.host_key_fingerprint, node.pending_host_key) == ("AAAAkey", "SHA256:abc", "")
    assert NodeEvent.objects.filter(node=node, kind="host_key.accepted", actor="user:ops").exists()
    assert not NodeEvent.objects.filter(node=node, kind="host_key.captured", acknowledged_at=None).exists()
    with pytest.raises(Conflict):
        services.node_host_key_accept(node=node, fingerprint="SHA256:abc", actor="user:ops")


# --- heartbeats ------------------------------------------------------------------------------------


@pytest.fixture(params=["native", "portable"])
def store_path(request, monkeypatch):
    """Each heartbeat test runs through both ways of storing: the database's own (one statement on
    PostgreSQL) and the portable statement-by-statement one (SQLite's, forced here on any database)."""
    if request.param == "portable":
        monkeypatch.setattr(services, "_heartbeat_store", partial(services._heartbeat_store, portable=True))
    return request.param


def _online_node() -> Node:
    node = set_state(make_node(roles=["llm"]), NodeState.ONLINE)
    services.node_agent_token_issue(node=node, actor="t")
    return node


def test_a_heartbeat_stores_a_sample_services_and_role_versions(store_path):
    node = _online_node()
    result = services.heartbeat_ingest(node=node, heartbeat=heartbeat(1))
    assert (result.accepted, result.duplicate, result.sequence) == (True, False, 1)
    node.refresh_from_db()
    assert node.last_heartbeat_sequence == 1
    assert node.agent_version == "1.0.0"
    assert HeartbeatSample.objects.get(node=node).cpu_percent == 12.5
    ollama = Service.objects.get(node=node, name="ollama")
    assert (ollama.port, ollama.state, ollama.discoverable, ollama.protocol) == (
        11434,
        "running",
        True,
        "http",
    )
    assert NodeRole.objects.get(node=node, role__name="llm").actual_version == "0.5.1"


def test_a_replayed_sequence_is_acknowledged_but_stored_once(store_path):
    node = _online_node()
    services.heartbeat_ingest(node=node, heartbeat=heartbeat(5))
    node.refresh_from_db()
    again = services.heartbeat_ingest(node=node, heartbeat=heartbeat(5))
    older = services.heartbeat_ingest(node=node, heartbeat=heartbeat(3))
    assert again.duplicate
    assert older.duplicate
    assert HeartbeatSample.objects.filter(node=node).count() == 1


@pytest.mark.parametrize("state", [NodeState.MAINTENANCE, NodeState.DRAINING, NodeState.PENDING])
def test_a_heartbeat_never_moves_a_node_in_an_operator_state(state, store_path):
    node = set_state(_online_node(), state)
    result = services.heartbeat_ingest(node=node, heartbeat=heartbeat(1))
    assert result.state == state
    node.refresh_from_db()
    assert node.state == state
    assert node.last_heartbeat_sequence == 1  # the data is kept, the state is not touched
    assert not node.transitions.exists()


def test_a_degraded_node_whose_roles_all_run_again_comes_back_online(store_path):
    node = set_state(_online_node(), NodeState.DEGRADED)
    result = services.heartbeat_ingest(node=node, heartbeat=heartbeat(1))
    assert result.state == NodeState.ONLINE
    assert node.transitions.get().trigger == "heartbeat"


def test_services_are_rewritten_only_when_they_change(django_assert_num_queries, store_path):
    node = _online_node()
    services.heartbeat_ingest(node=node, heartbeat=heartbeat(1))
    node.refresh_from_db()
    # Unchanged services: PostgreSQL stores a heartbeat in one statement; the portable way takes a
    # savepoint, reads the node, advances it and inserts the sample.
    native_postgresql = store_path == "native" and connection.vendor == "postgresql"
    with django_assert_num_queries(1 if native_postgresql else 5):
        services.heartbeat_ingest(node=node, heartbeat=heartbeat(2))
    node.refresh_from_db()
    changed = heartbeat(3, services=[{"name": "ollama", "state": "failed", "port": 11434}])
    services.heartbeat_ingest(node=node, heartbeat=changed)
    assert Service.objects.get(node=node, name="ollama").state == "failed"


def test_role_reports_set_the_role_status_and_a_stopped_role_degrades_the_node(store_path):
    node = _online_node()
    services.heartbeat_ingest(node=node, heartbeat=heartbeat(1))
    assert NodeRole.objects.get(node=node, role__name="llm").status == "active"
    node.refresh_from_db()
    down = heartbeat(2, roles=[{"role": "llm", "running": False, "version": "0.5.1"}])
    result = services.heartbeat_ingest(node=node, heartbeat=down)
    assert result.state == NodeState.DEGRADED
    assert NodeRole.objects.get(node=node, role__name="llm").status == "failed"
    transition = node.transitions.get()
    assert (transition.trigger, transition.reason) == ("heartbeat", "agent reports llm not running")


def test_acknowledging_events_closes_only_open_attention_items():
    node = make_node()
    services.node_host_key_capture(
        node=node, key_type="ssh-ed25519", key_base64="AAAA", fingerprint="SHA256:a", actor="t"
    )
    assert services.node_events_acknowledge(events=NodeEvent.objects.filter(node=node), actor="user:ops") == 1
    assert services.node_events_acknowledge(events=NodeEvent.objects.filter(node=node), actor="user:ops") == 0
    assert NodeEvent.objects.get(kind="host_key.captured").acknowledged_by == "user:ops"


def test_decommission_deletes_the_sealed_agent_token():
    from slm_project.fleet.enrollment import _seal_agent_token
    from slm_project.security.models import Credential

    node = set_state(make_node(name="sealed"), NodeState.ONLINE)
    _seal_agent_token(node, services.node_agent_token_issue(node=node, actor="t"))
    assert Credential.objects.filter(name="agent-token:sealed").exists()
    services.node_decommission(node=node, confirm_name="sealed", actor="a")
    assert not Credential.objects.filter(name="agent-token:sealed").exists()
    assert Node.objects.get(pk=node.pk).agent_token_credential is None
