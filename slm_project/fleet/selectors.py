"""Reads of the fleet: node lists, the summary, discovery and metrics. Each list is built with a fixed
number of queries whatever its length (query-count guards in the tests hold it)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet
from django.utils import timezone

from slm_project.access.tokens import token_matches
from slm_project.fleet.choices import NodeState, ServiceState
from slm_project.fleet.constants import HEARTBEAT_INTERVAL_SECONDS
from slm_project.fleet.models import HeartbeatSample, MetricRollup, Node, NodeEvent, NodeRole, Service

ORDERINGS = {
    "name",
    "-name",
    "state",
    "-state",
    "created_at",
    "-created_at",
    "last_heartbeat_at",
    "-last_heartbeat_at",
}


def node_list(*, filters: dict[str, Any] | None = None, ordering: str = "name") -> QuerySet[Node]:
    filters = filters or {}
    # Into a plain list (``Node.roles_in_order``), and only the role's name: a page of 500 nodes spent
    # a third of its time building a related manager per node and decoding the roles' JSON columns.
    roles = (
        NodeRole.objects.select_related("role")
        .defer("role__services", "role__ports", "role__health_probe", "role__description")
        .order_by("role__name")
    )
    nodes = Node.objects.prefetch_related(Prefetch("node_roles", queryset=roles, to_attr="prefetched_roles"))
    if filters.get("state"):
        nodes = nodes.filter(state__in=filters["state"])
    if filters.get("role"):
        nodes = nodes.filter(node_roles__role__name__in=filters["role"]).distinct()
    if filters.get("search"):
        term = filters["search"]
        nodes = nodes.filter(Q(name__icontains=term) | Q(address__icontains=term))
    if filters.get("label"):
        key, _, value = filters["label"].partition("=")
        nodes = nodes.filter(**{f"labels__{key}": value}) if value else nodes.filter(labels__has_key=key)
    return nodes.order_by(ordering if ordering in ORDERINGS else "name", "name")


def node_events(*, node: Node | None = None, needs_attention: bool | None = None) -> QuerySet[NodeEvent]:
    events = NodeEvent.objects.all()
    if node is not None:
        events = events.filter(node=node)
    if needs_attention is not None:
        events = events.filter(needs_attention=needs_attention, acknowledged_at__isnull=needs_attention)
    return events.order_by("-created_at", "-id")


def heartbeat_overdue_before() -> Any:
    return timezone.now() - timedelta(seconds=3 * HEARTBEAT_INTERVAL_SECONDS)


def fleet_summary() -> dict[str, Any]:
    by_state = Counter(dict(_count_by("state")))
    by_role = _roles_count()
    attention = set(
        NodeEvent.objects.filter(needs_attention=True, acknowledged_at__isnull=True).values_list(
            "node_id", flat=True
        )
    )
    attention |= set(Node.objects.filter(state=NodeState.ERROR).values_list("id", flat=True))
    attention |= set(
        Node.objects.filter(
            state__in=[NodeState.ONLINE, NodeState.DEGRADED], last_heartbeat_at__lt=heartbeat_overdue_before()
        ).values_list("id", flat=True)
    )
    return {
        "total": sum(by_state.values()),
        "by_state": {state: by_state.get(state, 0) for state in NodeState.values},
        "by_role": dict(sorted(by_role.items())),
        "needing_attention": sorted(attention, key=str),
    }


def _count_by(field: str) -> list[tuple[str, int]]:
    return list(Node.objects.values_list(field).annotate(n=Count("id")).values_list(field, "n"))


def _roles_count() -> dict[str, int]:
    rows = (
        NodeRole.objects.exclude(node__state=NodeState.DECOMMISSIONED)
        .values_list("role__name")
        .annotate(n=Count("id"))
        .values_list("role__name", "n")
    )
    return dict(rows)


def discovery_endpoints(*, service: str | None = None) -> list[Service]:
    """Discoverable endpoints, healthy first: a running service on an online node with a fresh heartbeat.

    Endpoints of nodes in draining, maintenance or decommissioned are left out: traffic must not go there.
    """
    services = (
        Service.objects.filter(discoverable=True, port__isnull=False)
        .exclude(
            node__state__in=[
                NodeState.DECOMMISSIONED,
                NodeState.DRAINING,
                NodeState.MAINTENANCE,
                NodeState.PENDING,
            ]
        )
        .select_related("node")
    )
    if service is not None:
        services = services.filter(name=service)
    overdue = heartbeat_overdue_before()

    def healthy(endpoint: Service) -> bool:
        node = endpoint.node
        return (
            endpoint.state == ServiceState.RUNNING
            and node.state == NodeState.ONLINE
            and node.last_heartbeat_at is not None
            and node.last_heartbeat_at >= overdue
        )

    endpoints = list(services)
    for endpoint in endpoints:
        endpoint.healthy = healthy(endpoint)
    return sorted(endpoints, key=lambda e: (not e.healthy, e.node.name, e.name))


def node_metrics(*, node: Node, window: str) -> list[dict[str, Any]]:
    """Samples for charts: ``raw`` (last 24 h of heartbeats), ``5m`` or ``1h`` rollups."""
    if window == "raw":
        since = timezone.now() - timedelta(hours=24)
        return list(
            HeartbeatSample.objects.filter(node=node, sent_at__gte=since)
            .order_by("sequence")
            .values(
                "sequence",
                "sent_at",
                "cpu_percent",
                "memory_percent",
                "disk_percent",
                "load_1m",
                "uptime_seconds",
            )
        )
    return list(
        MetricRollup.objects.filter(node=node, resolution=window)
        .order_by("bucket_start")
        .values(
            "bucket_start",
            "samples",
            "cpu_avg",
            "cpu_max",
            "memory_avg",
            "memory_max",
            "disk_max",
            "load_avg",
        )
    )


def node_agent_token_matches(*, node_id, token: str) -> bool:
    """Whether ``token`` is the agent token of node ``node_id`` (False for an unknown node)."""
    stored_hash = Node.objects.filter(pk=node_id).values_list("agent_token_hash", flat=True).first()
    return stored_hash is not None and token_matches(token, stored_hash)
