"""A real deployment requested over the REST API, against the isolated test host: a real worker runs the
``redis`` role while the client tails the events API by counter, and the ops portal's progress feed
ends up telling the same story as the API (every event, in order, the host's result)."""

from __future__ import annotations

import json
import time

import pytest
from django.test import Client

from shared_contracts.schemas.deployments import DeploymentDetail, DeploymentEventPage, RunStatus
from slm_project.access.services import api_client_create
from tests.slm.deployments.test_deploy_e2e import _fresh_pool, node, work_dir, worker  # noqa: F401 - fixtures used here

pytestmark = pytest.mark.django_db(transaction=True)

RUN_WAIT_SECONDS = 180


def test_a_deployment_requested_over_the_api_runs_and_its_events_tail_to_the_end(
    isolated_host,
    node,  # noqa: F811 - the fixture imported above
    work_dir,  # noqa: F811 - the fixture imported above
    admin_user,
):
    api = Client()
    _, token = api_client_create(name="e2e", scopes=["deployments:read", "deployments:write"])
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    body = {"nodes": [str(node.pk)], "roles": ["redis"], "extra_vars": {"redis_maxmemory": "32mb"}}
    response = api.post(
        "/api/v1/deployments",
        json.dumps(body),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="e2e-1",
        **auth,
    )
    assert response.status_code == 201, response.json()
    deployment = DeploymentDetail.model_validate(response.json())
    events_url = f"/api/v1/deployments/{deployment.id}/events"

    # Tail the run as a client would: ask again from the last counter until the run has ended.
    after, counters, pages = 0, [], 0
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while True:
        page = DeploymentEventPage.model_validate(
            api.get(f"{events_url}?after={after}&limit=50", **auth).json()
        )
        pages += 1
        counters += [event.counter for event in page.results]
        after = page.next_after
        if page.finished and not page.has_more:
            break
        assert time.monotonic() < deadline, f"still {page.run_status} after {RUN_WAIT_SECONDS} s"
        if not page.results:
            time.sleep(0.2)

    detail = DeploymentDetail.model_validate(api.get(f"/api/v1/deployments/{deployment.id}", **auth).json())
    (run,) = detail.runs
    assert (detail.status, run.status) == (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED), run.status_reason
    assert counters == list(range(1, len(counters) + 1))  # every event once, in order, no gap
    assert run.events_emitted == run.events_stored == len(counters) > 10
    assert pages > 1
    assert run.host_stats[node.name].changed > 0
    assert run.host_stats[node.name].failed == run.host_stats[node.name].unreachable == 0

    operator = Client()
    operator.force_login(admin_user)
    feed = operator.get(f"/admin/deployments/deployment/{deployment.id}/progress/?attempt=1&after=0").json()
    assert [event["counter"] for event in feed["events"]] == counters
    assert (feed["run"]["status"], feed["run"]["finished"]) == ("succeeded", True)
    assert feed["hosts"] == [
        {
            "host": node.name,
            "status": "changed",
            **{
                key: getattr(run.host_stats[node.name], key)
                for key in ("ok", "changed", "failed", "unreachable", "skipped")
            },
        }
    ]
    assert feed["tasks"]["started"] > 3

    # The same key again: the same deployment, nothing new queued.
    again = api.post(
        "/api/v1/deployments",
        json.dumps(body),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="e2e-1",
        **auth,
    )
    assert again.status_code == 200
    assert again.json()["id"] == str(deployment.id)
