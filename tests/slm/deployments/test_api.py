"""The deployments REST API: create with an idempotency key, list with filters, detail, events paged by
counter, cancel and retry; bad input refused with typed errors; scopes; query-count guards.

Runs are enqueued on commit; here the enqueued run ids are recorded instead of sent, and the runs' events
are written through the executor's own service functions (``tests/slm/deployments/runs.py``).
"""

from __future__ import annotations

import json
import uuid

import pytest
from pydantic import BaseModel

from shared_contracts.schemas.common import ErrorBody, Page
from shared_contracts.schemas.deployments import (
    Deployment as DeploymentSchema,
)
from shared_contracts.schemas.deployments import (
    DeploymentDetail,
    DeploymentEvent,
    DeploymentEventPage,
    DeploymentRun,
    DeploymentTarget,
    HostCounts,
)
from slm_project.access.services import api_client_create
from slm_project.deployments import services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.models import Deployment
from slm_project.deployments.models import DeploymentRun as Run
from slm_project.fleet import services as fleet_services
from tests.slm.deployments.factories import make_online_node
from tests.slm.deployments.runs import playbook_events, recap, request, run_with_events

pytestmark = pytest.mark.django_db

LIST = "/api/v1/deployments"


@pytest.fixture(autouse=True)
def sent(monkeypatch):
    """Run ids enqueued (on commit in production); nothing reaches a broker here."""
    sent: list[str] = []
    monkeypatch.setattr(services, "enqueue_run", lambda run: sent.append(str(run.pk)))
    return sent


@pytest.fixture
def api(client):
    """A test client authenticated as an API client with the given scopes."""

    def with_scopes(*scopes):
        _, token = api_client_create(name=f"client-{uuid.uuid4().hex[:8]}", scopes=scopes)
        client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return client

    return with_scopes


@pytest.fixture
def ops(api):
    return api("deployments:read", "deployments:write")


def post(client, path, body=None, **extra):
    return client.post(path, json.dumps(body or {}), content_type="application/json", **extra)


def error(response) -> ErrorBody:
    return ErrorBody.model_validate(response.json())


def fields_of(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def detail_url(deployment) -> str:
    return f"{LIST}/{deployment.pk}"


# --- scopes ---------------------------------------------------------------------------------------


def test_anonymous_requests_are_refused(client):
    assert client.get(LIST).status_code in (401, 403)
    assert post(client, LIST, {"nodes": [], "roles": []}).status_code in (401, 403)


def test_a_token_without_deployments_write_reads_but_cannot_request_cancel_or_retry(api):
    node = make_online_node()
    deployment = request([node])
    reader = api("deployments:read", "nodes:write")
    assert reader.get(LIST).status_code == 200
    assert reader.get(detail_url(deployment)).status_code == 200
    for path, body in (
        (LIST, {"nodes": [str(node.pk)], "roles": ["redis"]}),
        (f"{detail_url(deployment)}/cancel", {}),
        (f"{detail_url(deployment)}/retry", {}),
    ):
        response = post(reader, path, body)
        assert response.status_code == 403, path
        assert error(response).code == "permission_denied"
    assert Deployment.objects.count() == 1
    assert Run.objects.get().status == RunStatus.QUEUED


def test_a_fleet_token_sees_no_deployments(api):
    assert api("nodes:read", "nodes:write").get(LIST).status_code == 403


def test_staff_operators_use_the_api_with_their_session(admin_client):
    node = make_online_node()
    response = post(admin_client, LIST, {"nodes": [str(node.pk)], "roles": ["redis"]})
    assert response.status_code == 201, response.json()
    assert response.json()["requested_by"] == "user:admin"


# --- create ---------------------------------------------------------------------------------------


def test_create_queues_a_deployment_and_answers_the_contract_detail(ops, sent):
    node = make_online_node()
    body = {
        "nodes": [str(node.pk)],
        "roles": ["redis", "slm-agent"],
        "extra_vars": {"redis_maxmemory": "64mb"},
        "idempotency_key": "req-1",
    }
    response = post(ops, LIST, body)
    assert response.status_code == 201, response.json()
    payload = response.json()
    detail = DeploymentDetail.model_validate(payload)
    assert set(payload) == fields_of(DeploymentDetail)
    assert detail.roles == ["slm-agent", "redis"]  # dependency order
    assert detail.nodes == [DeploymentTarget(id=node.pk, name=node.name)]
    assert (detail.status, detail.attempts, detail.strategy) == (RunStatus.QUEUED, 1, "all_at_once")
    assert detail.requested_by.startswith("api-client:client-")
    (run,) = detail.runs
    assert set(payload["runs"][0]) == fields_of(DeploymentRun)
    assert (run.attempt, run.status, run.events_emitted, run.events_stored) == (1, RunStatus.QUEUED, 0, 0)
    assert sent == [str(run.id)]


def test_the_same_idempotency_key_returns_the_same_deployment_with_200(ops, sent):
    node = make_online_node()
    body = {"nodes": [str(node.pk)], "roles": ["redis"], "idempotency_key": "same"}
    first = post(ops, LIST, body)
    assert first.status_code == 201
    again = post(ops, LIST, body | {"roles": ["slm-agent"]})  # the key wins over the body
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["roles"] == ["redis"]
    assert Deployment.objects.count() == 1
    assert len(sent) == 1


def test_the_idempotency_key_may_come_as_a_header(ops):
    node = make_online_node()
    body = {"nodes": [str(node.pk)], "roles": ["redis"]}
    first = post(ops, LIST, body, HTTP_IDEMPOTENCY_KEY="hdr-1")
    again = post(ops, LIST, body, HTTP_IDEMPOTENCY_KEY="hdr-1")
    same_as_field = post(ops, LIST, body | {"idempotency_key": "hdr-1"})
    assert (first.status_code, again.status_code, same_as_field.status_code) == (201, 200, 200)
    assert first.json()["idempotency_key"] == "hdr-1"
    assert {again.json()["id"], same_as_field.json()["id"]} == {first.json()["id"]}
    clash = post(ops, LIST, body | {"idempotency_key": "other"}, HTTP_IDEMPOTENCY_KEY="hdr-1")
    assert clash.status_code == 400
    assert "idempotency_key" in error(clash).fields
    without = post(ops, LIST, body)
    assert without.status_code == 201  # no key: a new deployment every time
    assert Deployment.objects.count() == 2


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"roles": ["nosuchrole"]}, "roles", "Unknown roles: nosuchrole"),
        ({"roles": ["../../etc/passwd"]}, "roles", "is not a role name"),
        ({"roles": ["redis/../common"]}, "roles", "is not a role name"),
        ({"roles": []}, "roles", ""),
        ({"nodes": ["00000000-0000-0000-0000-000000000000"]}, "nodes", "Unknown nodes"),
        ({"nodes": ["not-a-uuid"]}, "nodes", ""),
        ({"nodes": []}, "nodes", ""),
        (
            {"extra_vars": {"ansible_ssh_common_args": "-o ProxyCommand=sh"}},
            "extra_vars",
            "is not a variable",
        ),
        ({"extra_vars": {"redis_password": "mine"}}, "extra_vars", "is not a variable"),
        ({"extra_vars": {"redis_maxmemory": {"nested": 1}}}, "extra_vars", "a plain value"),
        ({"strategy": "yolo"}, "strategy", "Choose one of"),
        ({"strategy_options": {"batch_size": 2}}, "strategy_options", "Unknown options of the all_at_once"),
        ({"strategy": "rolling"}, "strategy_options", "takes batch_size or batch_percent"),
        ({"idempotency_key": "k" * 101}, "idempotency_key", ""),
    ],
)
def test_bad_input_is_400_naming_the_field_and_nothing_is_written(ops, sent, change, field, message):
    node = make_online_node()
    body = {"nodes": [str(node.pk)], "roles": ["redis"]} | change
    response = post(ops, LIST, body)
    assert response.status_code == 400, response.json()
    refused = error(response)
    assert refused.code == "validation_error"
    assert field in refused.fields, refused.fields
    assert message in " ".join(refused.fields[field])
    assert not Deployment.objects.exists()
    assert sent == []


def test_a_decommissioned_node_is_409(ops):
    node = make_online_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    response = post(ops, LIST, {"nodes": [str(node.pk)], "roles": ["redis"]})
    assert response.status_code == 409
    assert error(response).code == "conflict"
    assert f"{node.name} is decommissioned" in error(response).message
    assert not Deployment.objects.exists()


def test_a_malformed_body_is_400(ops):
    response = ops.post(LIST, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert error(response).code == "parse_error"


# --- list and detail ------------------------------------------------------------------------------


def test_list_is_a_contract_page_newest_first_with_filters(ops):
    a, b = make_online_node(), make_online_node()
    first = request([a], roles=["slm-agent"])
    second = request([a, b])
    third = request([b])
    services.deployment_cancel(deployment=third, actor="user:ops")

    body = ops.get(LIST).json()
    page = Page[DeploymentSchema].model_validate(body)
    assert set(body) == fields_of(Page)
    assert all(set(item) == fields_of(DeploymentSchema) for item in body["results"])
    assert [item.id for item in page.results] == [third.pk, second.pk, first.pk]
    assert [target.name for target in page.results[1].nodes] == sorted([a.name, b.name])

    def ids(query: str) -> list:
        response = ops.get(f"{LIST}?{query}")
        assert response.status_code == 200, response.json()
        return [uuid.UUID(item["id"]) for item in response.json()["results"]]

    assert ids("status=canceled") == [third.pk]
    assert ids("status=queued,canceled") == [third.pk, second.pk, first.pk]
    assert ids(f"node={a.pk}") == [second.pk, first.pk]
    assert ids("role=slm-agent") == [first.pk]
    assert ids("role=redis&status=queued") == [second.pk]
    assert ids(f"role=redis&node={b.pk}") == [third.pk, second.pk]
    assert ids("ordering=created_at") == [first.pk, second.pk, third.pk]
    assert ids("page_size=1&page=2") == [second.pk]
    assert ops.get(f"{LIST}?page_size=1").json()["count"] == 3


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=sleeping", "status"),
        ("role=mainframe", "role"),
        ("node=nope", "node"),
        ("ordering=id", "ordering"),
    ],
)
def test_bad_list_filters_are_400(ops, query, field):
    response = ops.get(f"{LIST}?{query}")
    assert response.status_code == 400
    assert field in error(response).fields


def test_detail_has_every_run_with_per_host_counts_and_event_counts(ops):
    node = make_online_node()
    deployment = request([node])
    hosts = [node.name]
    events = playbook_events(hosts, fail_on=node.name)
    run_with_events(
        deployment.runs.get(),
        events,
        finish=RunStatus.FAILED,
        host_stats=recap(hosts, fail_on=node.name),
        emitted=len(events) + 2,  # two events Ansible emitted never arrived
    )
    services.deployment_retry(deployment=deployment, actor="user:ops")

    response = ops.get(detail_url(deployment))
    assert response.status_code == 200
    detail = DeploymentDetail.model_validate(response.json())
    assert (detail.status, detail.attempts) == (RunStatus.QUEUED, 2)
    failed, retry = detail.runs
    assert (failed.attempt, failed.status, retry.attempt, retry.status) == (
        1,
        RunStatus.FAILED,
        2,
        RunStatus.QUEUED,
    )
    assert failed.host_stats == {
        node.name: HostCounts(ok=3, changed=1, failed=1, unreachable=0, skipped=0, rescued=0, ignored=0)
    }
    assert (failed.events_emitted, failed.events_stored) == (len(events) + 2, len(events))
    assert failed.started_at is not None
    assert failed.finished_at is not None
    assert set(response.json()["runs"][0]["host_stats"][node.name]) == fields_of(HostCounts)


def test_an_unknown_deployment_is_404_in_the_error_shape(ops):
    for path in (f"{LIST}/{uuid.uuid4()}", f"{LIST}/{uuid.uuid4()}/events"):
        response = ops.get(path)
        assert response.status_code == 404
        assert error(response).code == "not_found"
    assert post(ops, f"{LIST}/{uuid.uuid4()}/cancel").status_code == 404


def _grow(count: int) -> None:
    for _ in range(count):
        a, b = make_online_node(), make_online_node()
        deployment = request([a, b])
        run_with_events(deployment.runs.get(), playbook_events([a.name, b.name], tasks=1))


def test_the_list_takes_the_same_queries_for_3_and_15_deployments(ops, django_assert_max_num_queries):
    _grow(3)
    with django_assert_max_num_queries(8) as few:
        assert len(ops.get(LIST).json()["results"]) == 3
    _grow(12)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(ops.get(LIST).json()["results"]) == 15


def test_events_take_the_same_queries_for_10_and_400_events(ops, django_assert_max_num_queries):
    node = make_online_node()
    small = request([node])
    run_with_events(small.runs.get(), playbook_events([node.name], tasks=4), finish=RunStatus.SUCCEEDED)
    big = request([node], roles=["slm-agent"])
    run_with_events(big.runs.get(), playbook_events([node.name], tasks=200), finish=RunStatus.SUCCEEDED)
    with django_assert_max_num_queries(8) as few:
        assert len(ops.get(f"{detail_url(small)}/events").json()["results"]) == 10
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(ops.get(f"{detail_url(big)}/events?limit=1000").json()["results"]) == 402


# --- events ---------------------------------------------------------------------------------------


def test_events_are_paged_by_counter_for_tailing(ops):
    node = make_online_node()
    deployment = request([node])
    run = deployment.runs.get()
    events = playbook_events([node.name])  # 2 + 4 tasks, each started and reported: 10 events
    lease = run_with_events(run, events[:7])
    url = f"{detail_url(deployment)}/events"

    first = ops.get(f"{url}?limit=4").json()
    page = DeploymentEventPage.model_validate(first)
    assert set(first) == fields_of(DeploymentEventPage)
    assert all(set(item) == fields_of(DeploymentEvent) for item in first["results"])
    assert [event.counter for event in page.results] == [1, 2, 3, 4]
    assert (page.after, page.next_after, page.has_more, page.finished) == (0, 4, True, False)
    assert (page.run_id, page.attempt, page.run_status) == (run.pk, 1, RunStatus.RUNNING)

    rest = DeploymentEventPage.model_validate(ops.get(f"{url}?after=4&limit=4").json())
    assert [event.counter for event in rest.results] == [5, 6, 7]
    assert (rest.next_after, rest.has_more) == (7, False)

    # Nothing new yet: the same cursor comes back, so a tailing client just asks again.
    idle = DeploymentEventPage.model_validate(ops.get(f"{url}?after=7").json())
    assert (idle.results, idle.next_after, idle.has_more) == ([], 7, False)

    services.deployment_events_store(lease=lease, records=events[7:], emitted=len(events))
    services.deployment_run_finish(lease=lease, status=RunStatus.SUCCEEDED, emitted=len(events))
    tail = DeploymentEventPage.model_validate(ops.get(f"{url}?after=7").json())
    assert [event.counter for event in tail.results] == [8, 9, 10]
    assert (tail.finished, tail.run_status, tail.events_emitted, tail.events_stored) == (
        True,
        RunStatus.SUCCEEDED,
        10,
        10,
    )
    assert tail.results[-1].host == node.name


def test_events_of_an_earlier_attempt_and_bad_cursors(ops):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), playbook_events([node.name], tasks=1), finish=RunStatus.FAILED)
    services.deployment_retry(deployment=deployment, actor="user:ops")
    url = f"{detail_url(deployment)}/events"

    latest = DeploymentEventPage.model_validate(ops.get(url).json())
    assert (latest.attempt, latest.results, latest.run_status) == (2, [], RunStatus.QUEUED)
    earlier = DeploymentEventPage.model_validate(ops.get(f"{url}?attempt=1").json())
    assert (earlier.attempt, len(earlier.results), earlier.finished) == (1, 4, True)
    assert ops.get(f"{url}?attempt=3").status_code == 404
    for query, field in (
        ("after=-1", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("after=x", "after"),
    ):
        response = ops.get(f"{url}?{query}")
        assert response.status_code == 400, query
        assert field in error(response).fields


# --- cancel and retry -----------------------------------------------------------------------------


def test_cancel_ends_a_queued_run_and_a_finished_one_is_409(ops):
    deployment = request([make_online_node()])
    response = post(ops, f"{detail_url(deployment)}/cancel")
    assert response.status_code == 200
    detail = DeploymentDetail.model_validate(response.json())
    assert detail.status == RunStatus.CANCELED
    assert detail.runs[0].cancel_requested_by.startswith("api-client:")
    again = post(ops, f"{detail_url(deployment)}/cancel")
    assert again.status_code == 409
    assert error(again).code == "conflict"
    assert "canceled already" in error(again).message


def test_cancel_of_a_running_run_asks_its_executor_to_stop(ops):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), playbook_events([node.name], tasks=1))
    detail = DeploymentDetail.model_validate(post(ops, f"{detail_url(deployment)}/cancel").json())
    (run,) = detail.runs
    assert (run.status, detail.status) == (RunStatus.RUNNING, RunStatus.RUNNING)
    assert run.cancel_requested_at is not None


def test_retry_queues_a_new_attempt_of_a_failed_deployment(ops, sent):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), playbook_events([node.name], tasks=1), finish=RunStatus.FAILED)
    sent.clear()
    response = post(ops, f"{detail_url(deployment)}/retry")
    assert response.status_code == 201, response.json()
    detail = DeploymentDetail.model_validate(response.json())
    assert (detail.status, detail.attempts) == (RunStatus.QUEUED, 2)
    assert [run.status for run in detail.runs] == [RunStatus.FAILED, RunStatus.QUEUED]
    assert sent == [str(detail.runs[1].id)]
    # The new attempt is queued: a second retry is refused until it ends.
    again = post(ops, f"{detail_url(deployment)}/retry")
    assert again.status_code == 409
    assert "Attempt 2 is queued" in error(again).message
    assert Run.objects.count() == 2


@pytest.mark.parametrize("status", [RunStatus.CANCELED, RunStatus.TIMED_OUT, RunStatus.LOST])
def test_canceled_timed_out_and_lost_runs_may_be_retried(ops, status):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), [], finish=status)
    assert post(ops, f"{detail_url(deployment)}/retry").status_code == 201


def test_a_succeeded_deployment_is_not_retried(ops):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), playbook_events([node.name]), finish=RunStatus.SUCCEEDED)
    response = post(ops, f"{detail_url(deployment)}/retry")
    assert response.status_code == 409
    assert "Request a new deployment instead" in error(response).message


def test_retry_onto_a_node_decommissioned_since_is_409(ops, sent):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), [], finish=RunStatus.FAILED)
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    sent.clear()
    response = post(ops, f"{detail_url(deployment)}/retry")
    assert response.status_code == 409
    assert "decommissioned" in error(response).message
    assert Run.objects.count() == 1
    assert sent == []


# --- the contract's enums and limits --------------------------------------------------------------


def test_every_deployments_enum_and_limit_equals_the_contract():
    from shared_contracts.schemas import deployments as contract
    from slm_project.deployments import choices, constants
    from slm_project.deployments.api import serializers

    assert set(choices.RunStatus.values) == {member.value for member in contract.RunStatus}
    assert set(choices.Strategy.values) == {member.value for member in contract.Strategy}
    assert {str(status) for status in choices.FINISHED} == {str(s) for s in contract.FINISHED_STATUSES}
    assert {str(status) for status in services.RETRYABLE} == {str(s) for s in contract.RETRYABLE_STATUSES}
    assert constants.IDEMPOTENCY_KEY_MAX_LENGTH == contract.IDEMPOTENCY_KEY_MAX_LENGTH
    assert serializers.EVENTS_PAGE_MAX == contract.EVENTS_PAGE_MAX
