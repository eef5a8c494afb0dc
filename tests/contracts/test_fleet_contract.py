"""The fleet and discovery contract against a real SLM process (``live_slm``: gunicorn, its own database).

The fleet is built the way the outside world builds it: API clients with ``manage_slm.py
create_api_client``, nodes with ``POST /api/v1/nodes``, an agent token with ``issue_agent_token`` and a
heartbeat on the agent's endpoint. Enrollment needs SSH, so the two nodes are moved to ``online`` through
the SLM's own state machine in a ``manage_slm.py shell`` instead (discovery ignores pending nodes).
Then every fleet and discovery answer must validate against ``shared_contracts`` — through
``SlmClient`` and as raw JSON, field for field — scopes must hold, and the published OpenAPI components
must name the same fields as the contract models.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from pydantic import BaseModel, TypeAdapter

from shared_contracts import errors, paths
from shared_contracts.client import SlmClient
from shared_contracts.schemas.common import ErrorBody, Page
from shared_contracts.schemas.fleet import (
    FleetSummary,
    Heartbeat,
    HeartbeatAck,
    HeartbeatService,
    Node,
    NodeEvent,
    NodeFacts,
    NodeRoleInfo,
    NodeState,
    Role,
    RoleReport,
    ServiceEndpoint,
    ServiceState,
    Severity,
)

ALL_SCOPES = ("nodes:read", "nodes:write", "discovery:read")
LLM_PORT = 11434


@dataclass
class Fleet:
    url: str
    admin_token: str  # every scope
    discovery_token: str  # discovery:read only
    nodes_token: str  # nodes:read only
    revoked_token: str
    llm_node: Node  # online, ollama running, fresh heartbeat: a healthy endpoint
    sick_node: Node  # was online; its agent reports ollama stopped, so it is degraded: an unhealthy endpoint
    pending_node: Node
    ack: dict[str, Any]

    def client(self, token: str | None) -> SlmClient:
        return SlmClient(self.url, token, retries=0)

    def get(self, path: str, token: str | None = None, **params: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        response = requests.get(f"{self.url}{path}", headers=headers, params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response


def create_node(url: str, token: str, **fields: Any) -> Node:
    response = requests.post(
        f"{url}{paths.NODES}", json=fields, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert response.status_code == 201, response.text
    return Node.model_validate(response.json())


def heartbeat(*, ollama: ServiceState) -> Heartbeat:
    return Heartbeat(
        sequence=1,
        sent_at=datetime.now(UTC),
        agent_version="1.0.0",
        cpu_percent=12.5,
        memory_percent=40.0,
        disk_percent=55.0,
        load_1m=0.3,
        load_5m=0.2,
        load_15m=0.1,
        uptime_seconds=3600,
        services=[
            HeartbeatService(name="ollama", state=ollama, port=LLM_PORT),
            HeartbeatService(name="autobot-agent", state=ServiceState.RUNNING),
        ],
        listening_ports=[22, LLM_PORT],
        roles=[RoleReport(role="llm", running=ollama == ServiceState.RUNNING, version="0.5.1")],
    )


def send_heartbeat(live_slm, node: Node, beat: Heartbeat) -> requests.Response:
    token = live_slm.manage("issue_agent_token", "--node", node.name).stdout.strip().splitlines()[-1]
    return requests.post(
        f"{live_slm.url}{paths.node_heartbeat(node.id)}",
        data=beat.model_dump_json(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=10,
    )


BRING_ONLINE = """
from slm_project.fleet.models import Node
from slm_project.fleet.states import node_transition
for name in {names!r}:
    node = Node.objects.get(name=name)
    for state in ("enrolling", "online"):
        node = node_transition(
            node=node, to_state=state, trigger="enrollment", actor="contract-test",
            reason="enrolled without SSH for the contract test",
        )
"""

REVOKE = """
from slm_project.access.models import ApiClient
from slm_project.access.services import api_client_revoke
api_client_revoke(client=ApiClient.objects.get(name={name!r}))
"""


@pytest.fixture(scope="module")
def fleet(_live_slm_session) -> Fleet:
    live = _live_slm_session
    live.start()
    suffix = secrets.token_hex(3)
    admin_token = live.api_token(ALL_SCOPES)
    revoked_name = f"revoked-{suffix}"
    revoked_token = live.api_token(["discovery:read"], name=revoked_name)
    live.manage("shell", "-c", REVOKE.format(name=revoked_name))

    llm = create_node(live.url, admin_token, name=f"llm-{suffix}", address="10.20.0.5", roles=["llm"])
    sick = create_node(live.url, admin_token, name=f"aaa-sick-{suffix}", address="10.20.0.6", roles=["llm"])
    pending = create_node(
        live.url, admin_token, name=f"pending-{suffix}", address="10.20.0.7", labels={"zone": "b"}
    )
    live.manage("shell", "-c", BRING_ONLINE.format(names=[llm.name, sick.name]))
    ack = send_heartbeat(live, llm, heartbeat(ollama=ServiceState.RUNNING))
    assert ack.status_code == 200, ack.text
    sick_ack = send_heartbeat(live, sick, heartbeat(ollama=ServiceState.STOPPED))
    assert sick_ack.status_code == 200, sick_ack.text
    return Fleet(
        url=live.url,
        admin_token=admin_token,
        discovery_token=live.api_token(["discovery:read"]),
        nodes_token=live.api_token(["nodes:read"]),
        revoked_token=revoked_token,
        llm_node=llm,
        sick_node=sick,
        pending_node=pending,
        ack=ack.json(),
    )


@pytest.fixture
def client(fleet, live_slm):
    with fleet.client(fleet.admin_token) as slm:
        yield slm


# ----------------------------------------------------------------------------------------------------
# SlmClient against the live SLM


def test_list_nodes_is_a_page_of_nodes_with_filters(client, fleet):
    page = client.list_nodes()
    assert isinstance(page, Page)
    assert page.count >= 3
    assert all(isinstance(node, Node) for node in page.results)
    names = [node.name for node in page.results]
    assert names == sorted(names)

    online = client.list_nodes(state=NodeState.ONLINE, search=fleet.llm_node.name)
    assert [node.id for node in online.results] == [fleet.llm_node.id]
    either = client.list_nodes(state=["pending", "online"], search=fleet.pending_node.name)
    assert [node.name for node in either.results] == [fleet.pending_node.name]
    llm_role = client.list_nodes(role="llm", search=fleet.llm_node.name.split("-")[-1])
    assert {node.name for node in llm_role.results} == {fleet.llm_node.name, fleet.sick_node.name}

    first = client.list_nodes(page_size=1)
    assert len(first.results) == 1
    assert first.next is not None
    second = client.list_nodes(page=2, page_size=1)
    assert second.results[0].name > first.results[0].name


def test_an_unknown_state_filter_is_a_validation_failure(client):
    with pytest.raises(errors.ValidationFailed) as excinfo:
        client.list_nodes(state="sleeping")
    assert "state" in excinfo.value.fields


def test_get_node_returns_the_heartbeat_facts(client, fleet):
    node = client.get_node(fleet.llm_node.id)
    assert node.id == fleet.llm_node.id
    assert node.state == NodeState.ONLINE
    assert node.agent_version == "1.0.0"
    assert node.last_heartbeat_at is not None
    assert [role.role for role in node.roles] == ["llm"]
    assert client.get_node(str(fleet.llm_node.id)) == node


def test_an_unknown_node_is_not_found_and_a_non_uuid_never_leaves_the_client(client):
    with pytest.raises(errors.NotFound):
        client.get_node(uuid.uuid4())
    with pytest.raises(ValueError, match="UUID"):
        client.get_node("../meta")


def test_discover_lists_healthy_endpoints_first(client, fleet):
    endpoints = client.discover("ollama")
    assert all(isinstance(endpoint, ServiceEndpoint) for endpoint in endpoints)
    ours = [e for e in endpoints if e.node_id in {fleet.llm_node.id, fleet.sick_node.id}]
    assert [e.node_id for e in ours] == [fleet.llm_node.id, fleet.sick_node.id]  # not name order
    healthy, sick = ours
    assert (healthy.healthy, healthy.state, healthy.port) == (True, ServiceState.RUNNING, LLM_PORT)
    assert healthy.url == f"http://10.20.0.5:{LLM_PORT}"
    assert (sick.healthy, sick.state) == (False, ServiceState.STOPPED)
    flags = [endpoint.healthy for endpoint in endpoints]
    assert flags == sorted(flags, reverse=True)
    assert {endpoint.service for endpoint in endpoints} == {"ollama"}


def test_discover_encodes_the_service_name_as_one_path_segment(client):
    # Decoded by the SLM as one name: no query string, no other endpoint is reached.
    assert client.discover("ollama?page=2") == []
    assert client.discover("no such service") == []
    with pytest.raises(errors.NotFound):
        client.discover("../nodes")  # a "/" inside the name never matches the one-segment route
    with pytest.raises(ValueError, match="service name"):
        client.discover("")


def test_discovery_lists_every_discoverable_endpoint(client, fleet):
    endpoints = client.discovery()
    assert fleet.llm_node.id in {e.node_id for e in endpoints if e.service == "ollama" and e.healthy}
    # autobot-agent is not discoverable (the registry says so), the pending node has no endpoint.
    assert "autobot-agent" not in {endpoint.service for endpoint in endpoints}
    assert fleet.pending_node.id not in {endpoint.node_id for endpoint in endpoints}


def test_fleet_summary(client, fleet):
    summary = client.fleet_summary()
    assert isinstance(summary, FleetSummary)
    assert set(summary.by_state) == set(NodeState)
    assert summary.total == sum(summary.by_state.values())
    assert summary.by_state["online"] >= 1
    assert summary.by_state["degraded"] >= 1  # the node whose agent reports its role stopped
    assert summary.by_state["pending"] >= 1
    assert summary.by_role["llm"] >= 2


# ----------------------------------------------------------------------------------------------------
# Raw answers, field for field

LIST_MODEL = TypeAdapter(list[ServiceEndpoint])


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


@pytest.mark.parametrize(
    ("path_of", "model"),
    [
        (lambda fleet: paths.NODES, Node),
        (lambda fleet: paths.ROLES, Role),
        (lambda fleet: paths.SERVICES, ServiceEndpoint),
        (lambda fleet: paths.EVENTS, NodeEvent),
        (lambda fleet: paths.node_events(fleet.llm_node.id), NodeEvent),
    ],
    ids=["nodes", "roles", "services", "events", "node-events"],
)
def test_each_list_is_a_page_of_its_contract_model_field_for_field(fleet, live_slm, path_of, model):
    body = fleet.get(path_of(fleet)).json()
    page = Page[model].model_validate(body)
    assert page.count >= 1
    assert set(body) == _fields(Page)
    for item in body["results"]:
        assert set(item) == _fields(model), f"{model.__name__}: {sorted(set(item) ^ _fields(model))}"


def test_roles_are_the_whole_registry(fleet, live_slm):
    roles = Page[Role].model_validate(fleet.get(paths.ROLES, page_size=100).json())
    by_name = {role.name: role for role in roles.results}
    assert set(by_name) == {
        "slm-agent",
        "backend",
        "frontend",
        "redis",
        "ai-stack",
        "npu-worker",
        "browser-worker",
        "llm",
    }
    assert by_name["llm"].ports == [LLM_PORT]
    assert by_name["llm"].services == ["ollama"]


def test_node_events_record_the_lifecycle(fleet, live_slm):
    events = Page[NodeEvent].model_validate(fleet.get(paths.node_events(fleet.llm_node.id)).json())
    assert {event.node_id for event in events.results} == {fleet.llm_node.id}
    assert all(event.severity in set(Severity) for event in events.results)
    assert events.count >= 3  # created, enrolling, online, agent token issued


def test_discovery_summary_and_node_detail_field_for_field(fleet, live_slm):
    for path in (paths.DISCOVERY, paths.discovery_service("ollama")):
        body = fleet.get(path, fleet.discovery_token).json()
        LIST_MODEL.validate_python(body)
        assert all(set(item) == _fields(ServiceEndpoint) for item in body)
    summary = fleet.get(paths.FLEET_SUMMARY).json()
    FleetSummary.model_validate(summary)
    assert set(summary) == _fields(FleetSummary)
    detail = fleet.get(paths.node(fleet.llm_node.id)).json()
    Node.model_validate(detail)
    # The detail adds what an operator needs to accept a host key; the contract ignores those.
    assert set(detail) >= _fields(Node)
    assert set(detail["facts"]) == _fields(NodeFacts)
    assert all(set(role) == _fields(NodeRoleInfo) for role in detail["roles"])


def test_the_heartbeat_ack_is_the_contract_ack(fleet):
    ack = HeartbeatAck.model_validate(fleet.ack)
    assert set(fleet.ack) == _fields(HeartbeatAck)
    assert (ack.accepted, ack.duplicate, ack.sequence) == (True, False, 1)


# ----------------------------------------------------------------------------------------------------
# Scopes and tokens


def test_a_discovery_token_finds_services_but_reads_no_nodes(fleet, live_slm):
    with fleet.client(fleet.discovery_token) as slm:
        assert slm.discover("ollama")
        for call in (slm.list_nodes, slm.fleet_summary, lambda: slm.get_node(fleet.llm_node.id)):
            with pytest.raises(errors.PermissionDenied) as excinfo:
                call()
            assert excinfo.value.status == 403


def test_a_nodes_token_reads_nodes_but_discovers_nothing(fleet, live_slm):
    with fleet.client(fleet.nodes_token) as slm:
        assert slm.list_nodes().count >= 3
        with pytest.raises(errors.PermissionDenied):
            slm.discover("ollama")
        with pytest.raises(errors.PermissionDenied):
            slm.discovery()


def test_a_read_token_cannot_write(fleet, live_slm):
    response = requests.post(
        f"{fleet.url}{paths.NODES}",
        json={"name": "intruder", "address": "10.9.9.9"},
        headers={"Authorization": f"Bearer {fleet.nodes_token}"},
        timeout=10,
    )
    assert response.status_code == 403
    assert ErrorBody.model_validate(response.json()).code == "permission_denied"


def test_without_a_token_every_fleet_endpoint_refuses(fleet, live_slm):
    with fleet.client(None) as slm:
        for call in (slm.list_nodes, slm.fleet_summary, slm.discovery, lambda: slm.discover("ollama")):
            with pytest.raises(errors.AuthenticationFailed) as excinfo:
                call()
            assert excinfo.value.status == 401
            assert excinfo.value.request_id


@pytest.mark.parametrize("which", ["revoked", "unknown", "garbage"])
def test_a_revoked_or_made_up_token_is_an_authentication_failure(fleet, live_slm, which):
    token = {
        "revoked": fleet.revoked_token,
        "unknown": f"slm_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}",
        "garbage": "not-a-token",
    }[which]
    with fleet.client(token) as slm, pytest.raises(errors.AuthenticationFailed) as excinfo:
        slm.discover("ollama")
    assert excinfo.value.status == 401
    assert token not in str(excinfo.value)


# ----------------------------------------------------------------------------------------------------
# The published OpenAPI document


@pytest.fixture(scope="module")
def openapi(_live_slm_session) -> dict[str, Any]:
    _live_slm_session.start()
    response = requests.get(f"{_live_slm_session.url}/api/schema/", params={"format": "json"}, timeout=30)
    response.raise_for_status()
    return response.json()


def _component(openapi: dict[str, Any], ref_or_name: str) -> dict[str, Any]:
    return openapi["components"]["schemas"][ref_or_name.rsplit("/", 1)[-1]]


COMPONENTS = [
    ("NodeOutput", Node),
    ("NodeDetailOutput", Node),
    ("NodeFacts", NodeFacts),
    ("NodeRoleOutput", NodeRoleInfo),
    ("RoleOutput", Role),
    ("ServiceEndpointOutput", ServiceEndpoint),
    ("NodeEventOutput", NodeEvent),
    ("FleetSummaryOutput", FleetSummary),
    ("HeartbeatAckOutput", HeartbeatAck),
]


@pytest.mark.parametrize(("name", "model"), COMPONENTS, ids=[name for name, _ in COMPONENTS])
def test_published_components_name_the_contract_fields(openapi, name, model):
    component = _component(openapi, name)
    published = set(component["properties"])
    if name == "NodeDetailOutput":
        assert published >= _fields(model)  # plus the pending host key, which the contract ignores
    else:
        assert published == _fields(model), sorted(published ^ _fields(model))
    # Whatever the contract requires, the SLM always sends; whatever it may send as null, the contract
    # accepts as None.
    required = {field for field, info in model.model_fields.items() if info.is_required()}
    assert required <= set(component.get("required", []))
    for field, schema in component["properties"].items():
        if schema.get("nullable") and field in model.model_fields:
            TypeAdapter(model.model_fields[field].annotation).validate_python(None)


@pytest.mark.parametrize(
    ("component", "field", "enum"),
    [
        ("NodeOutput", "state", NodeState),
        ("HeartbeatAckOutput", "state", NodeState),
        ("ServiceEndpointOutput", "state", ServiceState),
        ("NodeEventOutput", "severity", Severity),
    ],
)
def test_published_enums_are_the_contract_enums(openapi, component, field, enum):
    ref = _component(openapi, component)["properties"][field]["$ref"]
    assert _component(openapi, ref)["enum"] == [member.value for member in enum]


def test_the_fleet_paths_are_published(openapi):
    published = set(openapi["paths"])
    expected = {
        paths.NODES,
        f"{paths.NODES}/{{node_id}}",
        f"{paths.NODES}/{{node_id}}/events",
        f"{paths.NODES}/{{node_id}}/heartbeat",
        paths.ROLES,
        paths.SERVICES,
        paths.EVENTS,
        paths.FLEET_SUMMARY,
        paths.DISCOVERY,
        f"{paths.DISCOVERY}/{{service}}",
    }
    assert expected <= published


@pytest.mark.parametrize("path", [paths.NODES, paths.ROLES, paths.SERVICES, paths.EVENTS])
def test_published_list_answers_are_pages(openapi, path):
    schema = openapi["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = _component(openapi, schema["$ref"])
    assert set(schema.get("properties", {})) == _fields(Page)
