"""The heartbeat time series: raw samples for recent charts, 5-minute and hourly rollups for longer
windows, and retention that drops old rows with one indexed range delete each."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Avg, Count, Max
from django.db.models.functions import Trunc
from django.utils import timezone

from slm_project.fleet.constants import (
    RAW_SAMPLE_RETENTION_HOURS,
    ROLLUP_1H_RETENTION_DAYS,
    ROLLUP_5M_RETENTION_DAYS,
)
from slm_project.fleet.models import HeartbeatSample, MetricRollup

RESOLUTIONS = {
    MetricRollup.Resolution.FIVE_MINUTES: timedelta(minutes=5),
    MetricRollup.Resolution.ONE_HOUR: timedelta(hours=1),
}


def _bucket_floor(moment: datetime, size: timedelta) -> datetime:
    seconds = int(size.total_seconds())
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=moment.tzinfo)


@transaction.atomic
def metrics_rollup(*, resolution: str, now: datetime | None = None, lookback: timedelta | None = None) -> int:
    """(Re)compute the closed buckets of ``resolution`` in the lookback window from raw samples.

    Idempotent: a bucket is replaced, not added to, so a rerun (or a late sample) leaves correct rows.
    Returns the number of buckets written.
    """
    size = RESOLUTIONS[resolution]
    now = now or timezone.now()
    end = _bucket_floor(now, size)  # only closed buckets
    start = end - (lookback or size * 3)
    kind = "minute" if resolution == MetricRollup.Resolution.FIVE_MINUTES else "hour"
    rows = (
        HeartbeatSample.objects.filter(sent_at__gte=start, sent_at__lt=end)
        .annotate(bucket=Trunc("sent_at", kind))
        .values("node_id", "bucket")
        .annotate(
            samples=Count("id"),
            cpu_avg=Avg("cpu_percent"),
            cpu_max=Max("cpu_percent"),
            memory_avg=Avg("memory_percent"),
            memory_max=Max("memory_percent"),
            disk_max=Max("disk_percent"),
            load_avg=Avg("load_1m"),
        )
    )
    merged: dict[tuple, dict] = {}
    for row in rows:
        bucket = _bucket_floor(row["bucket"], size)
        key = (row["node_id"], bucket)
        into = merged.get(key)
        if into is None:
            merged[key] = dict(row, bucket=bucket)
            continue
        total = into["samples"] + row["samples"]
        for field in ("cpu_avg", "memory_avg", "load_avg"):
            into[field] = (into[field] * into["samples"] + row[field] * row["samples"]) / total
        for field in ("cpu_max", "memory_max", "disk_max"):
            into[field] = max(into[field], row[field])
        into["samples"] = total
    MetricRollup.objects.filter(resolution=resolution, bucket_start__gte=start, bucket_start__lt=end).delete()
    MetricRollup.objects.bulk_create(
        MetricRollup(
            node_id=row["node_id"],
            resolution=resolution,
            bucket_start=row["bucket"],
            samples=row["samples"],
            cpu_avg=row["cpu_avg"],
            cpu_max=row["cpu_max"],
            memory_avg=row["memory_avg"],
            memory_max=row["memory_max"],
            disk_max=row["disk_max"],
            load_avg=row["load_avg"],
        )
        for row in merged.values()
    )
    return len(merged)


def metrics_prune(*, now: datetime | None = None) -> dict[str, int]:
    """Drop samples and rollups past their retention (each one range delete on an indexed column)."""
    now = now or timezone.now()
    deleted_raw, _ = HeartbeatSample.objects.filter(
        received_at__lt=now - timedelta(hours=RAW_SAMPLE_RETENTION_HOURS)
    ).delete()
    deleted_5m, _ = MetricRollup.objects.filter(
        resolution=MetricRollup.Resolution.FIVE_MINUTES,
        bucket_start__lt=now - timedelta(days=ROLLUP_5M_RETENTION_DAYS),
    ).delete()
    deleted_1h, _ = MetricRollup.objects.filter(
        resolution=MetricRollup.Resolution.ONE_HOUR,
        bucket_start__lt=now - timedelta(days=ROLLUP_1H_RETENTION_DAYS),
    ).delete()
    return {"raw": deleted_raw, "5m": deleted_5m, "1h": deleted_1h}
