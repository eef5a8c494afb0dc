"""Retention: the events of runs that ended before the cutoff go, in small DELETEs by (run, counter)
range; recent runs, unfinished runs and every run row with its counts stay."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from slm_project.deployments import retention, services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.models import DeploymentEvent, DeploymentRun, RunDiff
from tests.slm.deployments.factories import make_online_node

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _not_sent(monkeypatch):
    monkeypatch.setattr(services, "enqueue_run", lambda run: None)


def run_with_events(count: int, *, finished_days_ago: float | None) -> DeploymentRun:
    node = make_online_node()
    deployment = services.deployment_create(node_ids=[node.pk], roles=["redis"], requested_by="user:ops")
    run = deployment.runs.get()
    now = timezone.now()
    DeploymentEvent.objects.bulk_create(
        DeploymentEvent(run=run, counter=counter, uuid=uuid.uuid4(), event="runner_on_ok", created_at=now)
        for counter in range(1, count + 1)
    )
    if finished_days_ago is None:
        DeploymentRun.objects.filter(pk=run.pk).update(events_emitted=count, events_stored=count)
    else:
        DeploymentRun.objects.filter(pk=run.pk).update(
            status=RunStatus.SUCCEEDED,
            finished_at=now - timedelta(days=finished_days_ago),
            events_emitted=count,
            events_stored=count,
            host_stats={node.name: {"ok": count, "changed": 1}},
        )
    run.refresh_from_db()
    return run


def test_old_runs_lose_their_events_in_bounded_deletes_and_keep_their_summary(settings):
    settings.DEPLOYMENTS_EVENT_RETENTION_DAYS = 30
    old = run_with_events(25, finished_days_ago=40)
    older = run_with_events(3, finished_days_ago=400)
    recent = run_with_events(7, finished_days_ago=29)
    unfinished = run_with_events(4, finished_days_ago=None)
    RunDiff.objects.create(run=old, counter=2, host="n", task="t", changed=True, diff="-a\n+b\n")

    with CaptureQueriesContext(connection) as queries:
        result = retention.deployment_events_prune(batch_size=10)
    assert (result.runs, result.events, result.statements) == (2, 28, 4)
    deletes = [query["sql"] for query in queries.captured_queries if query["sql"].startswith("DELETE")]
    # 1-10, 11-20, 21-25 of the old run, 1-3 of the older one: each DELETE is a counter range of one run.
    assert len(deletes) == 4
    assert all('"counter" >' in sql and '"counter" <=' in sql and '"run_id" =' in sql for sql in deletes)
    # One query finds the runs, one per run finds its highest counter; nothing reads the events themselves.
    assert len(queries.captured_queries) == 1 + 2 + 4

    assert not DeploymentEvent.objects.filter(run__in=[old, older]).exists()
    assert DeploymentEvent.objects.filter(run=recent).count() == 7
    assert DeploymentEvent.objects.filter(run=unfinished).count() == 4
    kept = DeploymentRun.objects.get(pk=old.pk)
    assert (kept.status, kept.events_emitted, kept.events_stored, kept.host_stats) == (
        RunStatus.SUCCEEDED,
        25,
        25,
        old.host_stats,
    )
    assert RunDiff.objects.filter(run=old).count() == 1  # check-mode diffs outlive the events

    # Nothing left to do: one query, no DELETE.
    with CaptureQueriesContext(connection) as queries:
        assert retention.deployment_events_prune().events == 0
    assert len(queries.captured_queries) == 1


def test_the_cutoff_follows_the_setting(settings):
    run = run_with_events(5, finished_days_ago=10)
    settings.DEPLOYMENTS_EVENT_RETENTION_DAYS = 30
    assert retention.deployment_events_prune().events == 0
    settings.DEPLOYMENTS_EVENT_RETENTION_DAYS = 7
    assert retention.deployment_events_prune().events == 5
    assert DeploymentRun.objects.filter(pk=run.pk, events_stored=5).exists()
