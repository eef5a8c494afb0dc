"""The node lifecycle's playbook runs (fleet/lifecycle.py, deployments/actions.py ``NodeLifecycleRuns``):
what an enrollment queues, what an operator's decommission queues or refuses, and how the end of a run
finishes the node's transition. Through the real services and database, without Ansible (the runs
themselves are in tests/slm/deployments/test_lifecycle_e2e.py)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.db import connection
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from service_kit.errors import Conflict
from slm_project.access.services import api_client_create
from slm_project.deployments import actions, execution, services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.constants import RUN_MAX_ATTEMPTS
from slm_project.deployments.models import Deployment, DeploymentAction, DeploymentRun
from slm_project.fleet import enrollment, lifecycle
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import EventKind, NodeState
from slm_project.fleet.models import Node, NodeEvent
from slm_project.fleet.registry import ROLES
from slm_project.fleet.states import TransitionNotAllowed
from slm_project.security.choices import CredentialKind
from slm_project.security.services import credential_reveal, credential_store
from tests.slm.deployments.factories import make_online_node
from tests.slm.fleet import test_admin
from tests.slm.fleet.factories import make_node
from tests.slm.fleet.test_admin import ADMIN_ACTOR, action_url, csrf_post, page_messages
from tests.slm.fleet.test_api import error, post

pytestmark = pytest.mark.django_db

# The admin tests' logged-in operator (pytest finds fixtures by the module attribute's name).
operator = test_admin.operator

PLAYBOOKS = Path(__file__).resolve().parents[3] / "ansible" / "playbooks"


@pytest.fixture
def sent(monkeypatch):
    """Runs are enqueued on commit; here nothing is sent anywhere (the run ids are recorded)."""
    sent: list[str] = []
    monkeypatch.setattr(services, "enqueue_run", lambda run: sent.append(str(run.pk)))
    return sent


@pytest.fixture
def slm_url(settings):
    settings.DEPLOYMENTS_SLM_URL = "https://slm.example.test"
    return settings.DEPLOYMENTS_SLM_URL


def make_enrolled_node(roles: tuple[str, ...] = ("slm-agent", "redis"), **overrides) -> Node:
    """A node as an enrollment leaves it: online, host key pinned, an agent token issued and sealed."""
    node = make_online_node(**overrides)
    token = fleet_services.node_agent_token_issue(node=node, actor="enrollment")
    node.agent_token_credential = credential_store(
        kind=CredentialKind.API_TOKEN, name=f"agent-token:{node.name}", secret=token
    )
    node.save(update_fields=["agent_token_credential"])
    fleet_services.node_roles_set(node=node, roles=list(roles))
    return Node.objects.get(pk=node.pk)


def decommission_of(node: Node) -> Deployment:
    return Deployment.objects.get(nodes=node, action__kind=DeploymentAction.Kind.DECOMMISSION)


def end_run(deployment: Deployment, status: str) -> DeploymentRun:
    """What an executor does: claim the run, end it with ``status``, then the lifecycle's follow-up."""
    run = deployment.runs.get()
    lease = services.deployment_run_claim(run_id=run.pk, owner="test-executor")
    ended = services.deployment_run_finish(
        lease=lease, status=status, reason="" if status == "succeeded" else "failed on x"
    )
    actions.action_run_ended(run=ended)
    return ended


def test_the_deployments_app_registers_the_lifecycle_runs():
    assert isinstance(lifecycle.node_playbooks(), actions.NodeLifecycleRuns)


# --- decommission -----------------------------------------------------------------------------------------


def observe_the_follow_up(monkeypatch) -> list[str]:
    """Before the lifecycle's follow-up of a run's end runs, another connection reads the run's status;
    the statuses it saw are returned (appended as follow-ups run)."""
    seen_elsewhere: list[str] = []
    follow_up = actions.action_run_ended

    def observed(*, run):
        def look() -> None:
            try:
                seen_elsewhere.append(DeploymentRun.objects.get(pk=run.pk).status)
            finally:
                connection.close()

        reader = threading.Thread(target=look)
        reader.start()
        reader.join()
        follow_up(run=run)

    monkeypatch.setattr(actions, "action_run_ended", observed)
    return seen_elsewhere


@pytest.mark.django_db(transaction=True)
def test_the_executor_ends_a_run_and_its_follow_up_in_one_transaction(sent, monkeypatch):
    """Whoever sees a decommission run succeeded sees its node decommissioned: the follow-up commits with
    the run's end (from another connection, the run is still running while the follow-up works). A
    follow-up that fails does not undo the end."""
    node = make_enrolled_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops", reason="retired")
    run = decommission_of(node).runs.get()
    lease = services.deployment_run_claim(run_id=run.pk, owner="test-executor")
    seen_elsewhere = observe_the_follow_up(monkeypatch)
    assert execution._finish(lease, RunStatus.SUCCEEDED, "", execution.RunWatch(lease)) == RunStatus.SUCCEEDED
    assert seen_elsewhere == [RunStatus.RUNNING]
    assert Node.objects.get(pk=node.pk).state == NodeState.DECOMMISSIONED

    other = make_enrolled_node()
    fleet_services.node_decommission(node=other, confirm_name=other.name, actor="user:ops")
    run = decommission_of(other).runs.get()
    lease = services.deployment_run_claim(run_id=run.pk, owner="test-executor")

    def failing(*, run):
        raise RuntimeError("the follow-up broke")

    monkeypatch.setattr(actions, "action_run_ended", failing)
    assert execution._finish(lease, RunStatus.SUCCEEDED, "", execution.RunWatch(lease)) == RunStatus.SUCCEEDED
    assert DeploymentRun.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED
    assert Node.objects.get(pk=other.pk).state == NodeState.ONLINE


@pytest.mark.django_db(transaction=True)
def test_the_reaper_ends_a_lost_run_and_its_follow_up_in_one_transaction(sent, monkeypatch):
    node = make_enrolled_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops", reason="retired")
    run = decommission_of(node).runs.get()
    services.deployment_run_claim(run_id=run.pk, owner="dead-executor")
    # The last attempt, and its executor died: the lease expired.
    DeploymentRun.objects.filter(pk=run.pk).update(
        attempt=RUN_MAX_ATTEMPTS, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    seen_elsewhere = observe_the_follow_up(monkeypatch)
    assert execution.runs_reap()["lost"] == 1
    assert seen_elsewhere == [RunStatus.RUNNING]
    assert DeploymentRun.objects.get(pk=run.pk).status == RunStatus.LOST
    assert NodeEvent.objects.filter(node=node, kind=EventKind.DECOMMISSION_FAILED).exists()
    assert Node.objects.get(pk=node.pk).state == NodeState.ONLINE


def test_decommission_of_an_enrolled_node_queues_the_cleanup_and_keeps_the_node(sent):
    node = make_enrolled_node()
    result = fleet_services.node_decommission(
        node=node, confirm_name=node.name, actor="user:ops", reason="retired", purge_data=True
    )
    assert result.state == NodeState.ONLINE
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE
    assert node.agent_token_hash
    deployment = decommission_of(node)
    assert deployment.requested_by == "user:ops"
    assert sorted(deployment.roles) == ["redis", "slm-agent"]
    assert (deployment.action.purge_data, deployment.action.reason) == (True, "retired")
    assert sent == [str(deployment.runs.get().pk)]
    event = NodeEvent.objects.get(node=node, kind=EventKind.DECOMMISSION_REQUESTED)
    assert event.data["deployment"] == str(deployment.pk)
    assert event.actor == "user:ops"


def test_the_cleanup_run_runs_decommission_yml_with_the_slm_key_and_no_secret(sent, settings):
    settings.DEPLOYMENTS_SLM_URL = ""  # a cleanup does not tell an agent where to report
    node = make_enrolled_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    run = DeploymentRun.objects.select_related("deployment").get(deployment=decommission_of(node))
    spec = actions.playbook_run_with_action(execution.playbook_run_for(run), deployment=run.deployment)
    assert spec.playbook == "decommission.yml"
    assert spec.extra_vars == {
        "decommission_purge_data": False,
        "slm_public_key": enrollment.slm_identity().public_key,
    }
    assert spec.secret_extra_vars == {}  # not even the Redis password of its redis role
    assert [host.secret_variables for host in spec.hosts] == [{}]  # nor its agent token
    assert actions.installs_nothing(deployment=run.deployment)


def test_a_successful_cleanup_decommissions_the_node_and_revokes_its_token(sent):
    node = make_enrolled_node()
    sealed = node.agent_token_credential
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops", reason="retired")
    end_run(decommission_of(node), RunStatus.SUCCEEDED)
    node.refresh_from_db()
    assert node.state == NodeState.DECOMMISSIONED
    assert (node.agent_token_hash, node.agent_token_credential) == ("", None)
    assert not type(sealed).objects.filter(pk=sealed.pk).exists()
    transition = node.transitions.get(to_state=NodeState.DECOMMISSIONED)
    assert transition.actor == "user:ops"
    assert transition.reason.startswith("retired; cleaned up by run ")


def test_a_failed_cleanup_leaves_the_node_as_it_was_with_an_event(sent):
    node = make_enrolled_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    deployment = decommission_of(node)
    end_run(deployment, RunStatus.FAILED)
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE
    assert node.agent_token_hash
    assert node.agent_token_credential is not None
    failed = NodeEvent.objects.get(node=node, kind=EventKind.DECOMMISSION_FAILED)
    assert failed.needs_attention
    assert failed.severity == "critical"
    assert "failed on x" in failed.message
    assert "without cleanup" in failed.message
    # Once it ended, the operator may try again.
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    assert Deployment.objects.filter(nodes=node, action__kind="decommission").count() == 2


def test_a_second_decommission_while_one_is_pending_is_refused(sent):
    node = make_enrolled_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    with pytest.raises(Conflict, match=f"A decommission of {node.name} is queued already"):
        fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    assert Deployment.objects.filter(nodes=node).count() == 1


def test_the_wrong_name_is_refused_and_nothing_is_queued(sent):
    node = make_enrolled_node()
    with pytest.raises(ValidationError) as excinfo:
        fleet_services.node_decommission(node=node, confirm_name=f"{node.name}x", actor="user:ops")
    assert "confirm_name" in excinfo.value.detail
    assert not Deployment.objects.exists()
    assert sent == []


def test_an_already_decommissioned_node_is_refused(sent):
    node = make_enrolled_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops", cleanup=False)
    with pytest.raises(TransitionNotAllowed, match="terminal state"):
        fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    assert not Deployment.objects.exists()
    assert sent == []


def test_purging_data_without_cleanup_is_refused(sent):
    node = make_enrolled_node()
    with pytest.raises(ValidationError) as excinfo:
        fleet_services.node_decommission(
            node=node, confirm_name=node.name, actor="user:ops", cleanup=False, purge_data=True
        )
    assert "purge_data" in excinfo.value.detail
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE


def test_without_cleanup_an_unreachable_node_is_decommissioned_at_once(sent):
    node = make_enrolled_node()
    node = fleet_services.node_decommission(
        node=node, confirm_name=node.name, actor="user:ops", reason="machine gone", cleanup=False
    )
    assert node.state == NodeState.DECOMMISSIONED
    assert node.agent_token_hash == ""
    reason = node.transitions.get(to_state=NodeState.DECOMMISSIONED).reason
    assert reason == "machine gone; without cleanup: AutoBot's files and the SLM's key stay on it"
    assert not Deployment.objects.exists()
    assert sent == []


def test_a_node_never_enrolled_has_nothing_to_clean_up(sent):
    node = make_node()  # pending: the SLM never logged in
    node = fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    assert node.state == NodeState.DECOMMISSIONED
    assert not Deployment.objects.exists()


def test_a_cleanup_finishing_after_a_decommission_without_cleanup_changes_nothing(sent):
    node = make_enrolled_node()
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops")
    deployment = decommission_of(node)
    # The machine died mid-run; the operator gave up on the cleanup.
    fleet_services.node_decommission(node=node, confirm_name=node.name, actor="user:ops", cleanup=False)
    end_run(deployment, RunStatus.SUCCEEDED)
    assert Node.objects.get(pk=node.pk).transitions.filter(to_state=NodeState.DECOMMISSIONED).count() == 1


def test_the_api_answers_202_while_the_cleanup_runs(sent, client):
    node = make_enrolled_node()
    _, token = api_client_create(name="ops-client", scopes=["nodes:write"])
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    url = f"/api/v1/nodes/{node.pk}/decommission"
    wrong = post(client, url, {"confirm_name": "nope"})
    assert wrong.status_code == 400
    assert "confirm_name" in error(wrong).fields
    forced = post(client, url, {"confirm_name": node.name, "cleanup": False, "purge_data": True})
    assert forced.status_code == 400
    assert "purge_data" in error(forced).fields
    accepted = post(client, url, {"confirm_name": node.name, "reason": "retired", "purge_data": True})
    assert accepted.status_code == 202, accepted.content
    assert accepted.json()["state"] == "online"
    assert decommission_of(node).action.purge_data is True
    again = post(client, url, {"confirm_name": node.name})
    assert again.status_code == 409
    assert "already" in error(again).message
    # The operator gives up on the cleanup (the machine is gone): decommissioned at once.
    gone = post(client, url, {"confirm_name": node.name, "cleanup": False})
    assert gone.status_code == 200
    assert gone.json()["state"] == "decommissioned"
    refused = post(client, url, {"confirm_name": node.name, "cleanup": False})
    assert refused.status_code == 409
    assert error(refused).code == "transition_not_allowed"


def test_the_admin_decommission_runs_the_cleanup_unless_it_is_unticked(sent, operator):
    node = make_enrolled_node()
    page = operator.get(action_url(node, "decommission")).content.decode()
    assert "Clean up the machine first" in page
    assert "Delete data directories too" in page

    response = csrf_post(
        operator, action_url(node, "decommission"), {"confirm_name": node.name, "cleanup": "on"}
    )
    assert any("Decommission of" in message for message in page_messages(response))
    assert Node.objects.get(pk=node.pk).state == NodeState.ONLINE
    assert decommission_of(node).requested_by == ADMIN_ACTOR

    response = csrf_post(operator, action_url(node, "decommission"), {"confirm_name": node.name})
    assert Node.objects.get(pk=node.pk).state == NodeState.DECOMMISSIONED
    assert any("decommissioned" in message for message in page_messages(response))


# --- enrollment -------------------------------------------------------------------------------------------


def enrollment_event(node: Node) -> NodeEvent:
    return fleet_services.node_event(
        node=node, kind=EventKind.ENROLLMENT_SUCCEEDED, message="Enrolled.", actor="enrollment"
    )


def test_an_enrollment_queues_enroll_yml_with_the_agent_and_its_token(sent, slm_url):
    node = make_enrolled_node(roles=("redis",))
    event = enrollment_event(node)
    enrollment._setup_start(node, event)
    deployment = Deployment.objects.get(nodes=node)
    assert deployment.action.kind == DeploymentAction.Kind.ENROLL
    assert deployment.roles == ["slm-agent"]
    assert deployment.idempotency_key == f"enroll:{node.pk}:{event.pk}"
    assert sorted(node.node_roles.values_list("role__name", flat=True)) == ["redis", "slm-agent"]
    started = NodeEvent.objects.get(node=node, kind=EventKind.SETUP_STARTED)
    assert started.data == {"deployment": str(deployment.pk)}
    # Once per enrollment: the same enrollment queues nothing more.
    enrollment._setup_start(node, event)
    assert Deployment.objects.filter(nodes=node).count() == 1
    assert len(sent) == 1

    run = DeploymentRun.objects.select_related("deployment").get(deployment=deployment)
    spec = actions.playbook_run_with_action(execution.playbook_run_for(run), deployment=run.deployment)
    assert spec.playbook == "enroll.yml"
    [host] = spec.hosts
    assert host.variables["slm_url"] == slm_url
    token = credential_reveal(credential=node.agent_token_credential).decode()
    assert host.secret_variables == {"slm_agent_token": token}


def test_an_enrollment_without_a_public_slm_url_says_why_the_agent_is_missing(sent, settings):
    settings.DEPLOYMENTS_SLM_URL = ""
    node = make_enrolled_node(roles=())
    enrollment._setup_start(node, enrollment_event(node))
    assert not Deployment.objects.exists()
    failed = NodeEvent.objects.get(node=node, kind=EventKind.SETUP_FAILED)
    assert failed.needs_attention
    assert "SLM_PUBLIC_URL is not set" in failed.message


def test_a_failed_enroll_run_leaves_the_node_online_with_an_event(sent, slm_url):
    node = make_enrolled_node(roles=())
    enrollment._setup_start(node, enrollment_event(node))
    end_run(Deployment.objects.get(nodes=node), RunStatus.FAILED)
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE
    failed = NodeEvent.objects.get(node=node, kind=EventKind.SETUP_FAILED)
    assert "enroll.yml run" in failed.message
    assert "failed on x" in failed.message


# --- the playbook's allowlist -----------------------------------------------------------------------------


def test_decommission_yml_removes_exactly_the_registry_services():
    play = yaml.safe_load((PLAYBOOKS / "decommission.yml").read_text())[0]
    names = [service["name"] for service in play["vars"]["decommission_services"]]
    assert sorted(names) == sorted({service for role in ROLES.values() for service in role.services})
    assert names[0] == "autobot-agent"  # stopped first: it would report the others going down
    service_play = yaml.safe_load((PLAYBOOKS / "service.yml").read_text())[0]
    assert set(names) == set(service_play["vars"]["allowed_services"])
    # The SLM's key goes in the last play, after everything else.
    last = yaml.safe_load((PLAYBOOKS / "decommission.yml").read_text())[-1]
    assert "authorized_keys" in last["tasks"][-1]["name"]
