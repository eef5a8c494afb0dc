"""Rollups, retention and the heartbeat watchdog."""

from datetime import UTC, datetime, timedelta

import pytest

from slm_project.fleet import metrics, services
from slm_project.fleet.choices import NodeState
from slm_project.fleet.models import HeartbeatSample, MetricRollup, Node
from tests.slm.fleet.factories import make_node

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def sample(node, sequence, at, cpu, memory=50.0):
    HeartbeatSample.objects.create(
        node=node,
        sequence=sequence,
        sent_at=at,
        received_at=at,
        cpu_percent=cpu,
        memory_percent=memory,
        disk_percent=70.0,
        load_1m=1.0,
        uptime_seconds=10,
    )


def test_five_minute_rollups_aggregate_closed_buckets_only():
    node = make_node()
    for i, cpu in enumerate([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 5, 15]):  # 30 s apart: 6 minutes
        sample(node, i, T0 + timedelta(seconds=30 * i), cpu)
    written = metrics.metrics_rollup(
        resolution="5m", now=T0 + timedelta(minutes=7), lookback=timedelta(hours=1)
    )
    assert written == 1  # 10:05 to 10:10 is still open
    rollup = MetricRollup.objects.get()
    assert rollup.bucket_start == T0
    assert rollup.samples == 10
    assert rollup.cpu_avg == pytest.approx(55.0)
    assert rollup.cpu_max == 100


def test_a_rerun_replaces_buckets_instead_of_adding():
    node = make_node()
    for i in range(10):
        sample(node, i, T0 + timedelta(seconds=30 * i), 10)
    for _ in range(2):
        metrics.metrics_rollup(resolution="5m", now=T0 + timedelta(minutes=6), lookback=timedelta(hours=1))
    assert MetricRollup.objects.get().samples == 10


def test_hourly_rollups():
    node = make_node()
    for i in range(120):  # two hours, one a minute
        sample(node, i, T0 + timedelta(minutes=i), cpu=i % 60)
    metrics.metrics_rollup(
        resolution="1h", now=T0 + timedelta(hours=2, minutes=1), lookback=timedelta(hours=3)
    )
    rollups = list(MetricRollup.objects.order_by("bucket_start"))
    assert [r.samples for r in rollups] == [60, 60]
    assert rollups[0].cpu_max == 59


def test_retention_prunes_only_what_is_old():
    node = make_node()
    now = T0 + timedelta(days=30)
    sample(node, 1, now - timedelta(hours=25), 1)
    sample(node, 2, now - timedelta(hours=1), 1)
    MetricRollup.objects.create(
        node=node,
        resolution="5m",
        bucket_start=now - timedelta(days=15),
        samples=1,
        cpu_avg=1,
        cpu_max=1,
        memory_avg=1,
        memory_max=1,
        disk_max=1,
        load_avg=1,
    )
    MetricRollup.objects.create(
        node=node,
        resolution="1h",
        bucket_start=now - timedelta(days=15),
        samples=1,
        cpu_avg=1,
        cpu_max=1,
        memory_avg=1,
        memory_max=1,
        disk_max=1,
        load_avg=1,
    )
    assert metrics.metrics_prune(now=now) == {"raw": 1, "5m": 1, "1h": 0}
    assert list(HeartbeatSample.objects.values_list("sequence", flat=True)) == [2]


def test_a_silent_online_node_is_degraded_and_a_good_heartbeat_restores_it():
    from tests.slm.fleet.factories import heartbeat

    node = make_node(roles=["llm"])
    Node.objects.filter(pk=node.pk).update(state=NodeState.ONLINE, last_heartbeat_at=T0)
    quiet = make_node()
    Node.objects.filter(pk=quiet.pk).update(state=NodeState.MAINTENANCE, last_heartbeat_at=T0)
    degraded = services.node_heartbeat_watch(now=T0 + timedelta(minutes=5))
    assert [n.pk for n in degraded] == [node.pk]
    node.refresh_from_db()
    assert node.state == NodeState.DEGRADED
    assert "agent silent" in node.state_reason
    assert Node.objects.get(pk=quiet.pk).state == NodeState.MAINTENANCE  # operator states untouched
    services.node_agent_token_issue(node=node, actor="t")
    node.refresh_from_db()
    assert services.heartbeat_ingest(node=node, heartbeat=heartbeat(1)).state == NodeState.ONLINE
