"""Deployments in the ops portal: the list, the wizard (review, confirm, refusals), the run page and its
progress feed, cancel and retry, permissions.

Logged in as a superuser with CSRF enforced, through the real services; enqueued run ids are recorded
instead of sent, and runs' events are written through the executor's services (``runs.py``).
"""

from __future__ import annotations

import dataclasses

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from slm_project.deployments import services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.models import Deployment, DeploymentRun
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import NodeState, Trigger
from slm_project.fleet.registry import ROLES
from slm_project.fleet.states import node_transition
from tests.slm.deployments.factories import make_online_node
from tests.slm.deployments.runs import playbook_events, recap, request, run_with_events
from tests.slm.fleet.factories import make_node

pytestmark = pytest.mark.django_db

WIZARD = "admin:deployments_deployment_wizard"


@pytest.fixture(autouse=True)
def sent(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(services, "enqueue_run", lambda run: sent.append(str(run.pk)))
    return sent


@pytest.fixture
def operator(admin_user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    return client


def csrf_post(client: Client, url: str, data: dict | None = None, *, follow: bool = False):
    """POST like a browser: GET the page first for its CSRF cookie, then send the token with the form."""
    client.get(url)
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": token}, follow=follow)


def page_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]] if response.context else []


def run_url(deployment) -> str:
    return reverse("admin:deployments_deployment_change", args=[deployment.pk])


def progress(client: Client, deployment, *, attempt: int = 1, after: int = 0) -> dict:
    url = reverse("admin:deployments_deployment_progress", args=[deployment.pk])
    response = client.get(f"{url}?attempt={attempt}&after={after}")
    assert response.status_code == 200, response.content
    return response.json()


def online_node_without_host_key(name: str):
    """Online but with no pinned key: the form offers it, the service refuses it."""
    node = make_node(name=name)
    for state in (NodeState.ENROLLING, NodeState.ONLINE):
        node = node_transition(node=node, to_state=state, trigger=Trigger.SYSTEM, actor="test")
    return node


# --------------------------------------------------------------------------------------------------
# The list


def test_the_list_shows_coloured_status_badges_and_filters(operator):
    a, b = make_online_node(name="alpha"), make_online_node(name="bravo")
    agent = request([a], roles=["slm-agent"])
    both = request([a, b])
    canceled = request([b])
    services.deployment_cancel(deployment=canceled, actor="user:ops")
    url = reverse("admin:deployments_deployment_changelist")

    response = operator.get(url)
    content = response.content.decode()
    assert response.status_code == 200
    assert "bg-orange-100" in content  # canceled
    assert ">queued<" in content
    assert "alpha, bravo" in content
    assert run_url(both) in content

    def shown(query: str) -> set:
        response = operator.get(url + query)
        assert response.status_code == 200
        return {deployment.pk for deployment in response.context["cl"].result_list}

    assert shown("?status__exact=canceled") == {canceled.pk}
    assert shown("?role=slm-agent") == {agent.pk}
    assert shown(f"?node={b.pk}") == {both.pk, canceled.pk}
    assert shown("?node=not-a-uuid") == set()


def test_the_list_takes_the_same_number_of_queries_for_3_and_15_deployments(operator):
    def list_queries(count: int) -> int:
        for _ in range(count):
            request([make_online_node(), make_online_node()])
        with CaptureQueriesContext(connection) as queries:
            assert operator.get(reverse("admin:deployments_deployment_changelist")).status_code == 200
        return len(queries)

    assert list_queries(3) == list_queries(12)


# --------------------------------------------------------------------------------------------------
# The wizard


def test_the_wizard_offers_only_deployable_nodes_and_roles_with_their_variables(operator):
    online = make_online_node(name="ready-1")
    gone = make_online_node(name="gone-1")
    fleet_services.node_decommission(node=gone, confirm_name=gone.name, actor="user:ops")
    make_node(name="pending-1")

    response = operator.get(reverse(WIZARD))

    assert response.status_code == 200
    form = response.context["form"]
    assert list(form.fields["nodes"].queryset) == [online]
    roles = [value for value, _ in form.fields["roles"].choices]
    assert roles == list(ROLES)  # every role of the registry has its Ansible role
    assert form.role_variables["slm-agent"] == ["var__slm_agent_interval_seconds"]
    assert form.role_variables["redis"] == [
        "var__redis_maxmemory",
        "var__redis_maxmemory_policy",
        "var__redis_appendonly",
    ]
    assert form.role_variables == {
        name: [f"var__{variable}" for variable in ROLES[name].variables]
        for name in ROLES
        if ROLES[name].variables
    }
    content = response.content.decode()
    assert 'data-role="redis"' in content
    assert "gone-1" not in content
    assert "pending-1" not in content


def test_the_wizard_leaves_out_a_role_without_an_ansible_role(operator, monkeypatch):
    make_online_node(name="ready-1")
    monkeypatch.setitem(ROLES, "llm", dataclasses.replace(ROLES["llm"], ansible_role="not_written_yet"))
    roles = [value for value, _ in operator.get(reverse(WIZARD)).context["form"].fields["roles"].choices]
    assert "llm" not in roles
    assert "redis" in roles


def test_the_add_button_leads_to_the_wizard(operator):
    response = operator.get(reverse("admin:deployments_deployment_add"))
    assert response.status_code == 302
    assert response["Location"] == reverse(WIZARD)


def test_the_wizard_reviews_then_creates_the_deployment_once(operator, sent):
    node = make_online_node(name="redis-1")
    data = {
        "nodes": [str(node.pk)],
        "roles": ["redis", "slm-agent"],
        "strategy": "all_at_once",
        "var__redis_maxmemory": "64mb",
        "idempotency_key": "wizard-test-1",
    }

    review = csrf_post(operator, reverse(WIZARD), {**data, "stage": "review"})
    assert review.status_code == 200
    assert review.context["confirming"] is True
    summary = review.context["summary"]
    assert (summary["roles"], summary["extra_vars"]) == (
        ["slm-agent", "redis"],
        [("redis_maxmemory", "64mb")],
    )
    content = review.content.decode()
    assert 'name="stage" value="confirm"' in content
    assert f'name="nodes" value="{node.pk}"' in content
    assert not Deployment.objects.exists()  # reviewing writes nothing

    confirmed = csrf_post(operator, reverse(WIZARD), {**data, "stage": "confirm"})
    deployment = Deployment.objects.get()
    assert confirmed.status_code == 302
    assert confirmed["Location"] == run_url(deployment)
    assert deployment.roles == ["slm-agent", "redis"]
    assert deployment.extra_vars == {"redis_maxmemory": "64mb"}
    assert deployment.requested_by == "user:admin"
    assert deployment.idempotency_key == "wizard-test-1"
    assert sent == [str(deployment.runs.get().pk)]

    # The confirm page submitted twice (a double click, a reload): still one deployment.
    again = csrf_post(operator, reverse(WIZARD), {**data, "stage": "confirm"}, follow=True)
    assert Deployment.objects.count() == 1
    assert "submitted already" in " ".join(page_messages(again))


def test_a_rolling_deployment_takes_its_batch_option(operator):
    a, b = make_online_node(), make_online_node()
    data = {"nodes": [str(a.pk), str(b.pk)], "roles": ["slm-agent"], "strategy": "rolling", "batch_size": "1"}
    review = csrf_post(operator, reverse(WIZARD), {**data, "stage": "review"})
    assert review.context["summary"]["options"] == "batch size 1"
    csrf_post(operator, reverse(WIZARD), {**data, "stage": "confirm"})
    deployment = Deployment.objects.get()
    assert (deployment.strategy, deployment.batch_size, deployment.batch_percent) == ("rolling", 1, None)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"nodes": []}, "nodes", "This field is required"),
        ({"roles": []}, "roles", "This field is required"),
        ({"roles": ["mailserver"]}, "roles", "not one of the available choices"),
        ({"roles": ["../redis"]}, "roles", "not one of the available choices"),
        (
            {"roles": ["slm-agent"], "var__redis_maxmemory": "64mb"},
            "var__redis_maxmemory",
            "not a variable of",
        ),
        ({"var__redis_maxmemory": "x" * 201}, "var__redis_maxmemory", "at most 200"),
        ({"strategy": "rolling"}, "batch_size", "takes a batch size or a batch percentage"),
        ({"strategy": "yolo"}, "strategy", "not one of the available choices"),
    ],
)
@pytest.mark.parametrize("stage", ["review", "confirm"])
def test_the_wizard_shows_form_errors_and_writes_nothing(operator, sent, change, field, message, stage):
    node = make_online_node()
    data = {"nodes": [str(node.pk)], "roles": ["redis"], "strategy": "all_at_once"} | change

    response = csrf_post(operator, reverse(WIZARD), {**data, "stage": stage})

    assert response.status_code == 200
    form = response.context["form"]
    assert message in " ".join(form.errors.get(field, [])), form.errors
    assert response.context["confirming"] is False
    assert not Deployment.objects.exists()
    assert sent == []


def test_a_decommissioned_node_cannot_be_posted_to_the_wizard(operator):
    node = make_online_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    data = {"nodes": [str(node.pk)], "roles": ["redis"], "strategy": "all_at_once", "stage": "confirm"}
    response = csrf_post(operator, reverse(WIZARD), data)
    assert "not one of the available choices" in " ".join(response.context["form"].errors["nodes"])
    assert not Deployment.objects.exists()


def test_a_refusal_of_the_service_is_shown_on_the_form(operator):
    node = online_node_without_host_key("nokey-1")
    data = {"nodes": [str(node.pk)], "roles": ["redis"], "strategy": "all_at_once", "stage": "confirm"}
    response = csrf_post(operator, reverse(WIZARD), data)
    assert response.status_code == 200
    assert "No pinned host key for nokey-1" in " ".join(response.context["form"].non_field_errors())
    assert "No pinned host key for nokey-1" in response.content.decode()
    assert not Deployment.objects.exists()


# --------------------------------------------------------------------------------------------------
# The run page and its feed


def test_the_run_page_polls_its_progress_feed(operator):
    node = make_online_node()
    deployment = request([node])
    response = operator.get(run_url(deployment))
    assert response.status_code == 200
    content = response.content.decode()
    config = response.context["run_config"]
    assert config["progressUrl"] == (
        reverse("admin:deployments_deployment_progress", args=[deployment.pk]) + "?attempt=1"
    )
    assert config["interval"] == 1000
    assert '<script id="run-config" type="application/json">' in content
    assert "setTimeout(poll, config.interval)" in content
    assert reverse("admin:deployments_deployment_cancel", args=[deployment.pk]) in content
    assert 'id="retry-action" hidden' in content  # a queued run is not retried


def test_the_feed_reflects_stored_events_per_host_and_in_counter_order(operator):
    a, b = make_online_node(name="host-a"), make_online_node(name="host-b")
    deployment = request([a, b])
    events = playbook_events(["host-a", "host-b"], fail_on="host-b")  # 2 + 4 tasks of 3 events: 14
    lease = run_with_events(deployment.runs.get(), events[:7])

    live = progress(operator, deployment)
    assert [event["counter"] for event in live["events"]] == list(range(1, 8))
    assert (live["next_after"], live["has_more"]) == (7, False)
    assert (live["run"]["status"], live["run"]["finished"], live["can_cancel"]) == ("running", False, True)
    assert live["tasks"] == {"started": 2, "expected": None}
    hosts = {host["host"]: host for host in live["hosts"]}
    # Task 1 ok on both; task 2 changed on host-a; host-b's result of task 2 is not stored yet.
    assert (hosts["host-a"]["ok"], hosts["host-a"]["changed"], hosts["host-a"]["status"]) == (2, 1, "changed")
    assert (hosts["host-b"]["ok"], hosts["host-b"]["changed"], hosts["host-b"]["status"]) == (1, 0, "ok")
    assert live["events"][3] | {"created_at": ""} == {
        "counter": 4,
        "created_at": "",
        "event": "runner_on_ok",
        "host": "host-a",
        "task": "Gathering Facts",
        "changed": False,
        "failed": False,
        "stdout": "runner_on_ok host-a Gathering Facts",
    }

    assert progress(operator, deployment, after=7)["events"] == []

    services.deployment_events_store(lease=lease, records=events[7:], emitted=len(events))
    services.deployment_run_finish(
        lease=lease,
        status=RunStatus.FAILED,
        host_stats=recap(["host-a", "host-b"], fail_on="host-b"),
        emitted=len(events),
        reason="host-b failed",
    )
    ended = progress(operator, deployment, after=7)
    assert [event["counter"] for event in ended["events"]] == list(range(8, 15))
    assert ended["events"][-1]["failed"] is True
    assert (ended["run"]["status"], ended["run"]["finished"]) == ("failed", True)
    assert (ended["run"]["events_emitted"], ended["run"]["events_stored"]) == (14, 14)
    assert (ended["can_cancel"], ended["can_retry"]) == (False, True)
    hosts = {host["host"]: host["status"] for host in ended["hosts"]}
    assert hosts == {"host-a": "changed", "host-b": "failed"}


def test_the_feed_lists_every_target_and_expects_the_tasks_of_the_last_success(operator):
    node = make_online_node(name="solo")
    done = request([node])
    run_with_events(done.runs.get(), playbook_events(["solo"]), finish=RunStatus.SUCCEEDED)
    waiting = request([node])
    fresh = progress(operator, waiting)
    assert fresh["hosts"] == [
        {
            "host": "solo",
            "status": "pending",
            "ok": 0,
            "changed": 0,
            "failed": 0,
            "unreachable": 0,
            "skipped": 0,
        }
    ]
    assert fresh["tasks"] == {"started": 0, "expected": 4}
    assert fresh["events"] == []


def test_the_feed_pages_a_long_run(operator):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), playbook_events([node.name], tasks=300))  # 602 events
    first = progress(operator, deployment)
    assert (len(first["events"]), first["next_after"], first["has_more"]) == (500, 500, True)
    rest = progress(operator, deployment, after=500)
    assert (len(rest["events"]), rest["next_after"], rest["has_more"]) == (102, 602, False)


def test_the_feed_of_an_unknown_attempt_or_deployment_is_404(operator):
    deployment = request([make_online_node()])
    url = reverse("admin:deployments_deployment_progress", args=[deployment.pk])
    assert operator.get(f"{url}?attempt=7").status_code == 404
    assert operator.get(f"{url}?after=-3").status_code == 400
    other = reverse("admin:deployments_deployment_progress", args=["00000000-0000-0000-0000-000000000000"])
    assert operator.get(other).status_code == 404


def test_the_run_page_of_an_earlier_attempt(operator):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), playbook_events([node.name], tasks=1), finish=RunStatus.FAILED)
    services.deployment_retry(deployment=deployment, actor="user:ops")
    response = operator.get(run_url(deployment) + "?attempt=1")
    assert response.status_code == 200
    assert response.context["run"].attempt == 1
    assert response.context["run_config"]["progressUrl"].endswith("?attempt=1")
    assert 'id="run-attempts"' in response.content.decode()
    assert operator.get(run_url(deployment) + "?attempt=9").status_code == 302


# --------------------------------------------------------------------------------------------------
# Cancel and retry


def test_cancel_asks_for_confirmation_then_cancels(operator):
    deployment = request([make_online_node()])
    url = reverse("admin:deployments_deployment_cancel", args=[deployment.pk])

    page = operator.get(url)
    assert page.status_code == 200
    assert "Cancel the deployment" in page.content.decode()
    assert DeploymentRun.objects.get().status == RunStatus.QUEUED  # GET changes nothing

    response = csrf_post(operator, url, follow=True)
    assert "Attempt 1 canceled." in page_messages(response)
    run = DeploymentRun.objects.get()
    assert (run.status, run.cancel_requested_by) == (RunStatus.CANCELED, "user:admin")

    again = csrf_post(operator, url, follow=True)
    assert any("canceled already" in message for message in page_messages(again))


def test_retry_queues_a_new_attempt(operator, sent):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), [], finish=RunStatus.LOST)
    sent.clear()
    response = csrf_post(
        operator, reverse("admin:deployments_deployment_retry", args=[deployment.pk]), follow=True
    )
    assert "Attempt 2 queued." in page_messages(response)
    assert [run.status for run in deployment.runs.order_by("attempt")] == [RunStatus.LOST, RunStatus.QUEUED]
    assert len(sent) == 1


def test_posting_cancel_without_the_csrf_token_is_refused(operator):
    deployment = request([make_online_node()])
    response = operator.post(reverse("admin:deployments_deployment_cancel", args=[deployment.pk]))
    assert response.status_code == 403
    assert DeploymentRun.objects.get().status == RunStatus.QUEUED


def test_an_operator_who_may_only_view_sees_progress_but_cannot_deploy_cancel_or_retry(django_user_model):
    viewer = django_user_model.objects.create_user(username="viewer", password="a-long-enough-password")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_deployment"))
    client = Client()
    client.force_login(viewer)
    deployment = request([make_online_node()])

    page = client.get(run_url(deployment))
    assert page.status_code == 200
    assert reverse("admin:deployments_deployment_cancel", args=[deployment.pk]) not in page.content.decode()
    assert progress(client, deployment)["run"]["status"] == "queued"
    assert client.get(reverse(WIZARD)).status_code == 403
    assert (
        client.post(reverse("admin:deployments_deployment_cancel", args=[deployment.pk])).status_code == 403
    )
    assert client.post(reverse("admin:deployments_deployment_retry", args=[deployment.pk])).status_code == 403
    assert DeploymentRun.objects.get().status == RunStatus.QUEUED


def test_the_feed_shows_the_plan_of_a_rolling_run(operator):
    a, b = make_online_node(), make_online_node()
    deployment = request([a, b], roles=["slm-agent"], strategy="rolling", strategy_options={"batch_size": 1})
    assert progress(operator, deployment)["steps"] == []  # planned when a worker claims the run
    run_with_events(deployment.runs.get(), [])
    steps = progress(operator, deployment)["steps"]
    assert len(steps) == 2  # one batch per node
    assert all(set(step) == {"name", "status", "reason"} for step in steps)


def test_the_run_page_escapes_what_it_shows(operator):
    node = make_online_node()
    deployment = request([node])
    run_with_events(deployment.runs.get(), [], finish=RunStatus.FAILED)
    DeploymentRun.objects.filter(deployment=deployment).update(status_reason='<script>alert("x")</script>')
    content = operator.get(run_url(deployment)).content.decode()
    assert '<script>alert("x")</script>' not in content
    assert "&lt;script&gt;" in content
