"""Runs the SLM starts by itself (check-mode runs, restarts, drift fixes) take the operator variables the
roles were last deployed with onto the node, not the roles' defaults."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from slm_project.deployments import actions, services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.models import Deployment, DeploymentAction, DeploymentRun
from tests.slm.deployments.factories import make_online_node

pytestmark = pytest.mark.django_db


def deployed(node, roles, extra_vars, *, status=RunStatus.SUCCEEDED, minutes_ago=0, action=None):
    deployment = Deployment.objects.create(roles=roles, extra_vars=extra_vars, requested_by="user:ops")
    deployment.nodes.set([node])
    if action is not None:
        DeploymentAction.objects.create(deployment=deployment, kind=action)
    DeploymentRun.objects.create(
        deployment=deployment,
        status=status,
        timeout_seconds=600,
        finished_at=timezone.now() - timedelta(minutes=minutes_ago),
    )
    return deployment


def test_each_role_takes_the_variables_of_its_latest_successful_deploy_on_that_node(settings):
    node, other = make_online_node(), make_online_node()
    deployed(node, ["llm"], {"llm_engine": "ollama"}, minutes_ago=30)
    deployed(node, ["llm", "redis"], {"llm_engine": "llama_cpp", "redis_maxmemory": "64mb"}, minutes_ago=20)
    deployed(node, ["redis"], {"redis_maxmemory": "128mb"}, minutes_ago=10)
    deployed(node, ["llm"], {"llm_engine": "ollama"}, status=RunStatus.FAILED, minutes_ago=5)  # failed
    deployed(node, ["llm"], {}, action=DeploymentAction.Kind.CHECK, minutes_ago=1)  # not a deploy
    deployed(other, ["llm"], {"llm_engine": "ollama"}, minutes_ago=0)  # another node

    assert services.node_role_variables(node_id=node.pk, roles=["llm", "redis"]) == {
        "llm_engine": "llama_cpp",
        "redis_maxmemory": "128mb",
    }
    assert services.node_role_variables(node_id=node.pk, roles=["slm-agent"]) == {}


def test_a_check_run_carries_them(settings, monkeypatch):
    monkeypatch.setattr(services, "enqueue_run", lambda run: None)
    node = make_online_node()
    deployed(node, ["llm"], {"llm_engine": "llama_cpp", "llm_models": "x"}, minutes_ago=10)
    check, _ = actions.action_deployment_create(
        node=node,
        roles=["llm"],
        kind=DeploymentAction.Kind.CHECK,
        requested_by="system:reconciler",
        idempotency_key="check-test",
    )
    assert check.extra_vars == {"llm_engine": "llama_cpp", "llm_models": "x"}
