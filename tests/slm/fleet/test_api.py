"""The fleet REST API: scopes, validation, the one error shape, heartbeats, query-count guards."""

import json

import pytest

from shared_contracts.schemas.common import ErrorBody
from slm_project.access.services import api_client_create
from slm_project.fleet import services
from slm_project.fleet.choices import NodeState
from slm_project.fleet.models import HeartbeatSample, Node, NodeStateTransition
from tests.slm.fleet.factories import heartbeat_json, make_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client):
    """A client authenticated as an API client with the given scopes."""

    def with_scopes(*scopes):
        _, token = api_client_create(name=f"client-{'-'.join(scopes)}".replace(":", "-"), scopes=scopes)
        client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return client

    return with_scopes


def post(client, path, body=None, **extra):
    return client.post(path, json.dumps(body or {}), content_type="application/json", **extra)


def error(response) -> ErrorBody:
    return ErrorBody.model_validate(response.json())


# --- authentication and scopes -------------------------------------------------------------------


def test_anonymous_requests_are_refused(client):
    assert client.get("/api/v1/nodes").status_code in (401, 403)


def test_a_garbage_token_is_401(client):
    response = client.get("/api/v1/nodes", HTTP_AUTHORIZATION="Bearer slm_nope_nope")
    assert response.status_code == 401
    assert error(response).code == "authentication_failed"


def test_scopes_are_enforced_per_method(api):
    reader = api("nodes:read")
    assert reader.get("/api/v1/nodes").status_code == 200
    assert post(reader, "/api/v1/nodes", {"name": "x", "address": "10.0.0.1"}).status_code == 403
    assert reader.get("/api/v1/discovery").status_code == 403


def test_a_revoked_client_is_refused(api):
    from slm_project.access.models import ApiClient
    from slm_project.access.services import api_client_revoke

    client = api("nodes:read")
    api_client_revoke(client=ApiClient.objects.get())
    assert client.get("/api/v1/nodes").status_code == 401


# --- nodes ---------------------------------------------------------------------------------------


def test_create_returns_the_node_and_duplicates_are_409(api):
    client = api("nodes:write", "nodes:read")
    response = post(client, "/api/v1/nodes", {"name": "redis-1", "address": "10.0.0.7", "roles": ["redis"]})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["state"] == "pending"
    assert body["roles"][0]["role"] == "redis"
    again = post(client, "/api/v1/nodes", {"name": "redis-1", "address": "10.0.0.8"})
    assert again.status_code == 409
    assert error(again).code == "conflict"
    assert Node.objects.count() == 1


@pytest.mark.parametrize(
    "body",
    [
        {"name": "ok", "address": "999.1.1.1"},
        {"name": "ok", "address": "10.0.0.1", "ssh_port": 0},
        {"name": "UPPER", "address": "10.0.0.1"},
        {"name": "ok", "address": "10.0.0.1", "roles": ["mainframe"]},
        {"address": "10.0.0.1"},
    ],
)
def test_bad_input_is_400_with_field_errors_and_nothing_written(api, body):
    response = post(api("nodes:write"), "/api/v1/nodes", body)
    assert response.status_code == 400
    assert error(response).code == "validation_error"
    assert error(response).fields
    assert not Node.objects.exists()


def test_list_filters_and_orders(api):
    make_node(name="a-node", roles=["llm"])
    Node.objects.filter(pk=make_node(name="b-node").pk).update(state=NodeState.ONLINE)
    client = api("nodes:read")
    assert [n["name"] for n in client.get("/api/v1/nodes?state=online").json()["results"]] == ["b-node"]
    assert [n["name"] for n in client.get("/api/v1/nodes?role=llm").json()["results"]] == ["a-node"]
    assert [n["name"] for n in client.get("/api/v1/nodes?ordering=-name").json()["results"]] == [
        "b-node",
        "a-node",
    ]
    assert client.get("/api/v1/nodes?state=flying").status_code == 400


@pytest.mark.parametrize("path", ["/api/v1/nodes", "/api/v1/events", "/api/v1/roles", "/api/v1/services"])
def test_list_endpoints_do_not_grow_queries_with_rows(api, path, django_assert_max_num_queries):
    client = api("nodes:read")
    for _ in range(3):
        node = make_node(roles=["llm", "slm-agent"])
        services.node_agent_token_issue(node=node, actor="t")
        node.refresh_from_db()
        services.heartbeat_ingest(node=node, heartbeat=heartbeat_json(1))
    with django_assert_max_num_queries(8) as few:
        assert client.get(path).status_code == 200
    for _ in range(12):
        node = make_node(roles=["llm", "slm-agent"])
        services.node_agent_token_issue(node=node, actor="t")
        node.refresh_from_db()
        services.heartbeat_ingest(node=node, heartbeat=heartbeat_json(1))
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert client.get(path).status_code == 200


def test_an_invalid_transition_is_409_naming_the_allowed_states(api):
    node = make_node()
    response = post(api("nodes:write"), f"/api/v1/nodes/{node.pk}/drain")
    assert response.status_code == 409
    body = error(response)
    assert body.code == "transition_not_allowed"
    assert "allowed: decommissioned, enrolling" in body.message


def test_decommission_requires_the_repeated_name(api):
    node = make_node(name="gone")
    client = api("nodes:write")
    wrong = post(client, f"/api/v1/nodes/{node.pk}/decommission", {"confirm_name": "gon"})
    assert wrong.status_code == 400
    assert "confirm_name" in error(wrong).fields
    ok = post(client, f"/api/v1/nodes/{node.pk}/decommission", {"confirm_name": "gone", "reason": "retired"})
    assert ok.status_code == 200
    assert ok.json()["state"] == "decommissioned"
    transition = NodeStateTransition.objects.get(node=node)
    assert transition.actor.startswith("api-client:")
    assert transition.reason == "retired"


def test_enroll_without_a_host_key_is_refused_before_anything_changes(api):
    node = make_node()
    response = post(api("nodes:write"), f"/api/v1/nodes/{node.pk}/enroll", {"password": "pw-123456"})
    assert response.status_code == 409
    node.refresh_from_db()
    assert node.state == "pending"
    assert node.bootstrap_credential is None


def test_unknown_node_is_404(api):
    response = api("nodes:read").get("/api/v1/nodes/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404


# --- heartbeats ----------------------------------------------------------------------------------


@pytest.fixture
def agent(client):
    node = make_node(roles=["llm"])
    Node.objects.filter(pk=node.pk).update(state=NodeState.ONLINE)
    token = services.node_agent_token_issue(node=node, actor="t")
    return node, token


def beat(client, node, token, body):
    return post(client, f"/api/v1/nodes/{node.pk}/heartbeat", body, HTTP_AUTHORIZATION=f"Bearer {token}")


def test_a_heartbeat_is_acknowledged_and_stored(client, agent):
    node, token = agent
    response = beat(client, node, token, heartbeat_json(1))
    assert response.status_code == 200
    assert response.json() == {"accepted": True, "duplicate": False, "sequence": 1, "state": "online"}
    assert HeartbeatSample.objects.filter(node=node).count() == 1


@pytest.mark.parametrize("token", ["", "nat_wrong", "slm_abc_def"])
def test_a_wrong_token_is_401_and_nothing_is_stored(client, agent, token):
    node, _ = agent
    response = beat(client, node, token, heartbeat_json(1))
    assert response.status_code == 401
    assert not HeartbeatSample.objects.exists()


def test_another_nodes_token_is_refused(client, agent):
    node, _ = agent
    other = make_node()
    other_token = services.node_agent_token_issue(node=other, actor="t")
    assert beat(client, node, other_token, heartbeat_json(1)).status_code == 401


def test_a_bad_payload_is_400_with_field_errors_and_nothing_is_stored(client, agent):
    node, token = agent
    body = heartbeat_json(1, cpu_percent=140, services=[{"name": "", "state": "dancing"}])
    response = beat(client, node, token, body)
    assert response.status_code == 400
    fields = error(response).fields
    assert "cpu_percent" in fields
    assert "services.0.state" in fields
    assert not HeartbeatSample.objects.exists()


def test_malformed_json_is_400(client, agent):
    node, token = agent
    response = client.post(
        f"/api/v1/nodes/{node.pk}/heartbeat",
        "{nope",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 400
    assert not HeartbeatSample.objects.exists()


def test_metrics_return_samples_in_sequence_order(api, agent):
    node, token = agent
    reader = api("nodes:read")
    for sequence in (1, 2, 3, 2):
        beat(reader, node, token, heartbeat_json(sequence))
    response = reader.get(f"/api/v1/nodes/{node.pk}/metrics?window=raw")
    # The replayed 2 was acknowledged, not stored again.
    assert [s["sequence"] for s in response.json()["samples"]] == [1, 2, 3]
