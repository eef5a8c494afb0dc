"""Reads of deployments."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from slm_project.deployments.models import Deployment, DeploymentEvent, DeploymentRun


def deployment_list() -> QuerySet[Deployment]:
    return Deployment.objects.prefetch_related("nodes")


def run_cancel_requested(*, run_id: Any) -> bool:
    return DeploymentRun.objects.filter(pk=run_id, cancel_requested_at__isnull=False).exists()


def run_events(*, run: DeploymentRun, after: int = 0, limit: int = 500) -> QuerySet[DeploymentEvent]:
    """The run's events after counter ``after``, in order (one index range scan)."""
    return DeploymentEvent.objects.filter(run=run, counter__gt=after).order_by("counter")[:limit]


# --------------------------------------------------------------------------------------------------
# Lists, details and live progress for the API and the ops portal

DEPLOYMENT_ORDERINGS = frozenset(
    {"created_at", "-created_at", "updated_at", "-updated_at", "status", "-status"}
)
# Events that carry one host's result of one task (item events repeat their task's result).
HOST_RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}
TASK_START_EVENTS = ("playbook_on_task_start", "playbook_on_handler_task_start")


def deployment_search(
    *,
    statuses: list[str] | None = None,
    node_id: Any = None,
    roles: list[str] | None = None,
    ordering: str = "-created_at",
) -> QuerySet[Deployment]:
    """Deployments with their nodes and number of attempts, in three queries for a page of any size.

    ``statuses`` and ``roles``: any of them matches. Role names are registry names (``[a-z0-9-]``), so
    an element is matched exactly as the quoted string in the JSON list on databases without JSON
    containment.
    """
    from django.db import connection
    from django.db.models import Count, Q, TextField
    from django.db.models.functions import Cast

    queryset = Deployment.objects.prefetch_related("nodes").annotate(attempts=Count("runs", distinct=True))
    if statuses:
        queryset = queryset.filter(status__in=statuses)
    if node_id is not None:
        queryset = queryset.filter(
            pk__in=Deployment.nodes.through.objects.filter(node_id=node_id).values("deployment_id")
        )
    if roles:
        match = Q()
        if connection.features.supports_json_field_contains:
            for role in roles:
                match |= Q(roles__contains=[role])
        else:
            queryset = queryset.annotate(roles_text=Cast("roles", TextField()))
            for role in roles:
                match |= Q(roles_text__contains=f'"{role}"')
        queryset = queryset.filter(match)
    if ordering not in DEPLOYMENT_ORDERINGS:
        ordering = "-created_at"
    return queryset.order_by(ordering, "-pk")


def deployment_detail(*, deployment_id: Any) -> Deployment | None:
    """One deployment with its nodes and runs (in attempt order) loaded."""
    from django.db.models import Count, Prefetch

    return (
        Deployment.objects.prefetch_related(
            "nodes", Prefetch("runs", queryset=DeploymentRun.objects.order_by("attempt"))
        )
        .annotate(attempts=Count("runs", distinct=True))
        .filter(pk=deployment_id)
        .first()
    )


def deployment_run(*, deployment: Deployment, attempt: int | None = None) -> DeploymentRun | None:
    """The run of ``attempt``, or the latest one."""
    runs = DeploymentRun.objects.filter(deployment=deployment)
    if attempt is not None:
        return runs.filter(attempt=attempt).first()
    return runs.order_by("-attempt").first()


def run_host_progress(*, run: DeploymentRun) -> dict[str, dict[str, int]]:
    """Per host, its task results so far (``ok`` counts ``changed`` too, as Ansible's recap does):
    one grouped query over the run's events. A finished run's recap (``host_stats``) is authoritative."""
    from django.db.models import Count

    if run.host_stats:
        return {host: dict(stats) for host, stats in run.host_stats.items()}
    hosts: dict[str, dict[str, int]] = {}
    rows = (
        DeploymentEvent.objects.filter(run=run, event__in=HOST_RESULT_EVENTS)
        .values("host", "event", "changed")
        .annotate(count=Count("counter"))
        .order_by()
    )
    for row in rows:
        counts = hosts.setdefault(
            row["host"], {"ok": 0, "changed": 0, "failed": 0, "unreachable": 0, "skipped": 0}
        )
        counts[HOST_RESULT_EVENTS[row["event"]]] += row["count"]
        if row["event"] == "runner_on_ok" and row["changed"]:
            counts["changed"] += row["count"]
    return dict(sorted(hosts.items()))


def run_task_progress(*, run: DeploymentRun) -> dict[str, int | None]:
    """``started``: tasks the run has started so far; ``expected``: the tasks of the last successful run
    of the same roles (``None`` before the first), which is how long this one will probably be."""
    from slm_project.deployments.choices import RunStatus

    started = DeploymentEvent.objects.filter(run=run, event__in=TASK_START_EVENTS).count()
    reference = (
        DeploymentRun.objects.filter(status=RunStatus.SUCCEEDED, deployment__roles=run.deployment.roles)
        .exclude(pk=run.pk)
        .order_by("-finished_at")
        .values_list("pk", flat=True)
        .first()
    )
    expected = None
    if reference is not None:
        expected = DeploymentEvent.objects.filter(run_id=reference, event__in=TASK_START_EVENTS).count()
    return {"started": started, "expected": expected}


def runs_with_orphans(*, host: str) -> QuerySet[DeploymentRun]:
    """Lost runs whose executor ran on ``host`` and whose processes and files were not cleaned up yet."""
    from slm_project.deployments.choices import RunStatus

    return DeploymentRun.objects.filter(
        status=RunStatus.LOST, executor_host=host, orphans_cleared_at__isnull=True
    ).exclude(work_dir="")
