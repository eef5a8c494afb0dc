"""The deployments contract against a real SLM process (``live_slm``: gunicorn, its own database).

Nodes are registered through the API and enrolled without SSH in a ``manage_slm.py shell`` (a pinned key,
then online through the state machine). No worker runs: a requested deployment stays queued, and one
attempt is played in a shell through the executor's own service functions (claim, fenced event writes,
finish), as a worker would have. Every deployments answer must validate against ``shared_contracts`` —
through ``SlmClient`` and as raw JSON, field for field — scopes must hold, the business gateway may
request a deployment only with ``deployments:write``, and the published OpenAPI components must name the
contract's fields.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from pydantic import BaseModel, TypeAdapter

from business_project.integrations.slm import gateway
from shared_contracts import errors, paths
from shared_contracts.client import SlmClient
from shared_contracts.schemas.common import ErrorBody, Page
from shared_contracts.schemas.deployments import (
    Deployment,
    DeploymentDetail,
    DeploymentEvent,
    DeploymentEventPage,
    DeploymentRequest,
    DeploymentRun,
    DeploymentTarget,
    HostCounts,
    RunStatus,
)
from shared_contracts.schemas.fleet import Node
from tests.fixtures.live_slm import free_port

ADMIN_SCOPES = ("nodes:read", "nodes:write", "deployments:read", "deployments:write")

ENROLL = """
from slm_project.fleet import services
from slm_project.fleet.choices import NodeState, Trigger
from slm_project.fleet.models import Node
from slm_project.fleet.states import node_transition
for name in {names!r}:
    node = Node.objects.get(name=name)
    services.node_host_key_capture(
        node=node, key_type="ssh-ed25519", actor="contract-test", fingerprint="SHA256:contract",
        key_base64="AAAAC3NzaC1lZDI1NTE5AAAAIBmW3ZtJ3gBu7d4Pwf4zV3kA7Q0a6bHcFqj5Oh1rGx1T",
    )
    node = services.node_host_key_accept(
        node=Node.objects.get(pk=node.pk), fingerprint="SHA256:contract", actor="contract-test"
    )
    for state in (NodeState.ENROLLING, NodeState.ONLINE):
        node = node_transition(node=node, to_state=state, trigger=Trigger.SYSTEM, actor="contract-test")
"""

DECOMMISSION = """
from slm_project.fleet import services
from slm_project.fleet.models import Node
node = Node.objects.get(name={name!r})
services.node_decommission(node=node, confirm_name=node.name, actor="contract-test")
"""

# What a worker would have written for the deployment's latest run: its events, then its end.
PLAY = """
from slm_project.deployments.models import DeploymentRun
from tests.slm.deployments.runs import playbook_events, recap, run_with_events
run = DeploymentRun.objects.filter(deployment_id={deployment_id!r}).order_by("-attempt").first()
hosts = {hosts!r}
run_with_events(
    run,
    playbook_events(hosts, fail_on=hosts[-1]),
    finish="failed",
    host_stats=recap(hosts, fail_on=hosts[-1]),
)
"""


@dataclass
class World:
    url: str
    admin_token: str
    writer_token: str  # deployments:read + deployments:write
    reader_token: str  # deployments:read
    fleet_token: str  # nodes:read
    nodes: list[Node]
    retired: Node  # decommissioned
    failed: DeploymentDetail  # one failed attempt with events
    suffix: str

    def client(self, token: str | None) -> SlmClient:
        return SlmClient(self.url, token, retries=0)

    def get(self, path: str, token: str | None = None, **params: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        response = requests.get(f"{self.url}{path}", headers=headers, params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response

    def post(
        self, path: str, body: Any = None, token: str | None = None, **headers: str
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.admin_token}", **headers}
        return requests.post(f"{self.url}{path}", json=body or {}, headers=headers, timeout=10)


def create_node(world_url: str, token: str, name: str, address: str) -> Node:
    response = requests.post(
        f"{world_url}{paths.NODES}",
        json={"name": name, "address": address},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return Node.model_validate(response.json())


@pytest.fixture(scope="module")
def world(_live_slm_session) -> World:
    live = _live_slm_session
    live.start()
    suffix = secrets.token_hex(3)
    admin_token = live.api_token(ADMIN_SCOPES)
    nodes = [
        create_node(live.url, admin_token, f"dep-a-{suffix}", "10.30.0.5"),
        create_node(live.url, admin_token, f"dep-b-{suffix}", "10.30.0.6"),
    ]
    retired = create_node(live.url, admin_token, f"dep-old-{suffix}", "10.30.0.7")
    live.manage("shell", "-c", ENROLL.format(names=[node.name for node in (*nodes, retired)]))
    live.manage("shell", "-c", DECOMMISSION.format(name=retired.name))
    writer_token = live.api_token(["deployments:read", "deployments:write"])
    with SlmClient(live.url, writer_token, retries=0) as slm:
        failed = slm.create_deployment(nodes=[node.id for node in nodes], roles=["slm-agent"])
    live.manage(
        "shell",
        "-c",
        PLAY.format(deployment_id=str(failed.id), hosts=sorted(node.name for node in nodes)),
    )
    return World(
        url=live.url,
        admin_token=admin_token,
        writer_token=writer_token,
        reader_token=live.api_token(["deployments:read"]),
        fleet_token=live.api_token(["nodes:read"]),
        nodes=nodes,
        retired=retired,
        failed=failed,
        suffix=suffix,
    )


@pytest.fixture
def client(world, live_slm):
    with world.client(world.writer_token) as slm:
        yield slm


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def assert_detail_fields(body: dict[str, Any]) -> None:
    DeploymentDetail.model_validate(body)
    assert set(body) == _fields(DeploymentDetail), sorted(set(body) ^ _fields(DeploymentDetail))
    assert all(set(target) == _fields(DeploymentTarget) for target in body["nodes"])
    for run in body["runs"]:
        assert set(run) == _fields(DeploymentRun), sorted(set(run) ^ _fields(DeploymentRun))
        assert all(set(counts) == _fields(HostCounts) for counts in run["host_stats"].values())


# ----------------------------------------------------------------------------------------------------
# SlmClient against the live SLM


def test_create_returns_a_queued_deployment_and_the_same_key_the_same_one(client, world):
    key = f"contract-{world.suffix}-create"
    node = world.nodes[0]
    created = client.create_deployment(
        nodes=[node.id],
        roles=["redis", "slm-agent"],
        extra_vars={"redis_maxmemory": "32mb"},
        idempotency_key=key,
    )
    assert isinstance(created, DeploymentDetail)
    assert created.roles == ["slm-agent", "redis"]
    assert created.nodes == [DeploymentTarget(id=node.id, name=node.name)]
    assert (created.status, created.attempts, created.idempotency_key) == (RunStatus.QUEUED, 1, key)
    assert created.extra_vars == {"redis_maxmemory": "32mb"}
    assert [run.status for run in created.runs] == [RunStatus.QUEUED]
    again = client.create_deployment(nodes=[node.id], roles=["slm-agent"], idempotency_key=key)
    assert again == created

    raw = world.post(
        paths.DEPLOYMENTS, {"nodes": [str(node.id)], "roles": ["redis"]}, **{"Idempotency-Key": key}
    )
    assert raw.status_code == 200  # seen before: the same deployment, not a new one
    assert_detail_fields(raw.json())
    assert raw.json()["id"] == str(created.id)


def test_a_rolling_request_keeps_its_batch_option(client, world):
    created = client.create_deployment(
        nodes=[node.id for node in world.nodes],
        roles=["slm-agent"],
        strategy="rolling",
        strategy_options={"batch_percent": 50},
    )
    assert (created.strategy, created.strategy_options) == ("rolling", {"batch_percent": 50})


def test_every_client_request_carries_a_key_so_a_resend_never_deploys_twice(client, world):
    first = client.create_deployment(nodes=[world.nodes[1].id], roles=["slm-agent"])
    second = client.create_deployment(nodes=[world.nodes[1].id], roles=["slm-agent"])
    assert first.idempotency_key.startswith("client-")
    assert first.id != second.id  # a key per call, not per client


def test_list_is_a_page_of_deployments_with_filters(client, world):
    page = client.list_deployments(node=world.nodes[1].id, page_size=100)
    assert isinstance(page, Page)
    assert world.failed.id in {deployment.id for deployment in page.results}
    assert all(world.nodes[1].id in {target.id for target in d.nodes} for d in page.results)
    created = [deployment.created_at for deployment in page.results]
    assert created == sorted(created, reverse=True)

    failed = client.list_deployments(status="failed", node=world.nodes[1].id)
    assert [deployment.id for deployment in failed.results] == [world.failed.id]
    either = client.list_deployments(status=["failed", "queued"], role="slm-agent", page_size=100)
    assert {deployment.status for deployment in either.results} <= {RunStatus.FAILED, RunStatus.QUEUED}
    assert all("slm-agent" in deployment.roles for deployment in either.results)

    first = client.list_deployments(page_size=1)
    assert (len(first.results), first.next is not None) == (1, True)
    oldest_first = client.list_deployments(ordering="created_at", page_size=1)
    assert oldest_first.results[0].created_at <= first.results[0].created_at

    with pytest.raises(errors.ValidationFailed) as excinfo:
        client.list_deployments(status="sleeping")
    assert "status" in excinfo.value.fields


def test_detail_has_runs_with_per_host_counts_and_event_counts(client, world):
    detail = client.get_deployment(world.failed.id)
    (run,) = [run for run in detail.runs if run.attempt == 1]
    assert run.status == RunStatus.FAILED
    hosts = sorted(node.name for node in world.nodes)
    assert set(run.host_stats) == set(hosts)
    assert run.host_stats[hosts[-1]].failed == 1
    assert run.host_stats[hosts[0]] == HostCounts(ok=4, changed=1)
    assert run.events_emitted == run.events_stored == 2 + 4 * 3
    assert run.finished_at is not None
    with pytest.raises(errors.NotFound):
        client.get_deployment(uuid.uuid4())
    with pytest.raises(ValueError, match="UUID"):
        client.get_deployment("../nodes")


def test_events_page_by_counter(client, world):
    first = client.deployment_events(world.failed.id, attempt=1, limit=5)
    assert isinstance(first, DeploymentEventPage)
    assert [event.counter for event in first.results] == [1, 2, 3, 4, 5]
    assert (first.next_after, first.has_more, first.finished) == (5, True, True)
    counters = [event.counter for event in first.results]
    after = first.next_after
    while True:
        page = client.deployment_events(world.failed.id, attempt=1, after=after, limit=5)
        counters += [event.counter for event in page.results]
        after = page.next_after
        if not page.has_more:
            break
    assert counters == list(range(1, 15))
    assert all(isinstance(event, DeploymentEvent) for event in page.results)
    assert page.results[-1].failed is True
    with pytest.raises(ValueError, match="limit"):
        client.deployment_events(world.failed.id, limit=0)


def test_cancel_then_cancel_again_is_a_conflict(client, world):
    queued = client.create_deployment(nodes=[world.nodes[0].id], roles=["slm-agent"])
    canceled = client.cancel_deployment(queued.id)
    assert canceled.status == RunStatus.CANCELED
    assert canceled.runs[0].cancel_requested_by.startswith("api-client:")
    with pytest.raises(errors.Conflict) as excinfo:
        client.cancel_deployment(queued.id)
    assert excinfo.value.status == 409
    retried = client.retry_deployment(queued.id)
    assert [run.status for run in retried.runs] == [RunStatus.CANCELED, RunStatus.QUEUED]
    with pytest.raises(errors.Conflict):
        client.retry_deployment(queued.id)  # its new attempt is still queued


@pytest.mark.parametrize(
    ("request_fields", "error", "field"),
    [
        ({"roles": ["nosuchrole"]}, errors.ValidationFailed, "roles"),
        ({"roles": ["../../etc/passwd"]}, errors.ValidationFailed, "roles"),
        (
            {"extra_vars": {"ansible_ssh_common_args": "-oProxyCommand=sh"}},
            errors.ValidationFailed,
            "extra_vars",
        ),
        ({"nodes": [uuid.UUID(int=0)]}, errors.ValidationFailed, "nodes"),
        ({"strategy": "rolling"}, errors.ValidationFailed, "strategy_options"),
        ({"retired": True}, errors.Conflict, None),
    ],
    ids=["unknown-role", "path-role", "extra-var", "unknown-node", "rolling-without-batch", "decommissioned"],
)
def test_bad_requests_are_typed_errors(client, world, request_fields, error, field):
    values: dict[str, Any] = {"nodes": [world.nodes[0].id], "roles": ["slm-agent"]}
    if request_fields.pop("retired", False):
        values["nodes"] = [world.retired.id]
    values |= request_fields
    with pytest.raises(error) as excinfo:
        client.create_deployment(**values)
    if field:
        assert field in excinfo.value.fields
    assert excinfo.value.request_id


# ----------------------------------------------------------------------------------------------------
# Raw answers, field for field


def test_raw_answers_are_the_contract_field_for_field(world, live_slm):
    page = world.get(paths.DEPLOYMENTS, page_size=100).json()
    Page[Deployment].model_validate(page)
    assert set(page) == _fields(Page)
    for item in page["results"]:
        assert set(item) == _fields(Deployment), sorted(set(item) ^ _fields(Deployment))
    assert_detail_fields(world.get(paths.deployment(world.failed.id)).json())
    events = world.get(paths.deployment_events(world.failed.id), attempt=1).json()
    DeploymentEventPage.model_validate(events)
    assert set(events) == _fields(DeploymentEventPage)
    assert all(set(event) == _fields(DeploymentEvent) for event in events["results"])


def test_a_raw_create_answers_201_then_200(world, live_slm):
    body = {
        "nodes": [str(world.nodes[0].id)],
        "roles": ["slm-agent"],
        "idempotency_key": f"raw-{world.suffix}",
    }
    first = world.post(paths.DEPLOYMENTS, body, token=world.writer_token)
    again = world.post(paths.DEPLOYMENTS, body, token=world.writer_token)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    assert_detail_fields(first.json())


# ----------------------------------------------------------------------------------------------------
# Scopes, and the business gateway


def test_a_read_token_reads_but_cannot_request_cancel_or_retry(world, live_slm):
    with world.client(world.reader_token) as slm:
        assert slm.get_deployment(world.failed.id).id == world.failed.id
        for call in (
            lambda: slm.create_deployment(nodes=[world.nodes[0].id], roles=["slm-agent"]),
            lambda: slm.cancel_deployment(world.failed.id),
            lambda: slm.retry_deployment(world.failed.id),
        ):
            with pytest.raises(errors.PermissionDenied) as excinfo:
                call()
            assert excinfo.value.status == 403


def test_a_fleet_token_sees_no_deployments(world, live_slm):
    with world.client(world.fleet_token) as slm, pytest.raises(errors.PermissionDenied):
        slm.list_deployments()
    response = requests.get(
        f"{world.url}{paths.DEPLOYMENTS}",
        headers={"Authorization": f"Bearer {world.fleet_token}"},
        timeout=10,
    )
    assert ErrorBody.model_validate(response.json()).code == "permission_denied"


@pytest.fixture
def business_gateway(settings, monkeypatch, world, live_slm):
    """The business side's gateway pointed at the live SLM; returns a setter for its token."""
    monkeypatch.setattr(gateway, "_clients", {})
    settings.SLM_API_URL = world.url

    def with_token(token: str) -> None:
        settings.SLM_API_TOKEN = token

    return with_token


def test_the_business_side_requests_a_deployment_with_deployments_write(business_gateway, world):
    business_gateway(world.writer_token)
    key = f"workflow-step-{world.suffix}"
    deployment = gateway.request_deployment(
        nodes=[str(world.nodes[1].id)], roles=["slm-agent"], idempotency_key=key
    )
    assert isinstance(deployment, DeploymentDetail)
    assert deployment.requested_by.startswith("api-client:")
    assert gateway.request_deployment(
        nodes=[str(world.nodes[1].id)], roles=["slm-agent"], idempotency_key=key
    ) == (deployment)


def test_the_business_side_without_deployments_write_is_refused(business_gateway, world):
    business_gateway(world.reader_token)
    with pytest.raises(gateway.SlmDeploymentRefused) as excinfo:
        gateway.request_deployment(
            nodes=[str(world.nodes[1].id)], roles=["slm-agent"], idempotency_key=f"nope-{world.suffix}"
        )
    assert excinfo.value.code == "permission_denied"


def test_the_gateway_names_the_refused_fields(business_gateway, world):
    business_gateway(world.writer_token)
    with pytest.raises(gateway.SlmDeploymentRefused) as excinfo:
        gateway.request_deployment(
            nodes=[str(world.nodes[1].id)], roles=["mainframe"], idempotency_key="bad-role"
        )
    assert excinfo.value.code == "validation_error"
    assert "roles" in excinfo.value.fields


def test_the_gateway_reports_an_slm_that_is_down(settings, monkeypatch):
    monkeypatch.setattr(gateway, "_clients", {})
    settings.SLM_API_URL = f"http://127.0.0.1:{free_port()}"
    settings.SLM_API_TOKEN = "slm_unused_token"
    with pytest.raises(gateway.SlmDown) as excinfo:
        gateway.request_deployment(nodes=[str(uuid.uuid4())], roles=["redis"], idempotency_key="down")
    assert excinfo.value.code == "slm_unavailable"


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
    ("DeploymentOutput", Deployment),
    ("DeploymentDetailOutput", DeploymentDetail),
    ("DeploymentRunOutput", DeploymentRun),
    ("DeploymentTarget", DeploymentTarget),
    ("HostCounts", HostCounts),
    ("DeploymentEventOutput", DeploymentEvent),
    ("DeploymentEventPageOutput", DeploymentEventPage),
]


@pytest.mark.parametrize(("name", "model"), COMPONENTS, ids=[name for name, _ in COMPONENTS])
def test_published_components_name_the_contract_fields(openapi, name, model):
    component = _component(openapi, name)
    assert set(component["properties"]) == _fields(model), sorted(
        set(component["properties"]) ^ _fields(model)
    )
    required = {field for field, info in model.model_fields.items() if info.is_required()}
    assert required <= set(component.get("required", []))
    for field, schema in component["properties"].items():
        if schema.get("nullable"):
            TypeAdapter(model.model_fields[field].annotation).validate_python(None)


def test_the_published_run_status_is_the_contract_enum(openapi):
    ref = _component(openapi, "DeploymentRunOutput")["properties"]["status"]["$ref"]
    assert _component(openapi, ref)["enum"] == [member.value for member in RunStatus]


def test_the_deployment_paths_are_published(openapi):
    base = paths.DEPLOYMENTS
    expected = {
        base,
        f"{base}/{{deployment_id}}",
        f"{base}/{{deployment_id}}/events",
        f"{base}/{{deployment_id}}/cancel",
        f"{base}/{{deployment_id}}/retry",
    }
    assert expected <= set(openapi["paths"])
    listing = openapi["paths"][base]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    if "$ref" in listing:
        listing = _component(openapi, listing["$ref"])
    assert set(listing.get("properties", {})) == _fields(Page)
    assert {"201", "200"} <= set(openapi["paths"][base]["post"]["responses"])


def test_the_published_request_body_is_the_contract_request(openapi):
    component = _component(openapi, "DeploymentCreateInputRequest")
    assert set(component["properties"]) == _fields(DeploymentRequest)
    required = {field for field, info in DeploymentRequest.model_fields.items() if info.is_required()}
    assert set(component.get("required", [])) == required
