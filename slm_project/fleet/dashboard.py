"""The ops portal's fleet overview (the admin index, via unfold's ``DASHBOARD_CALLBACK``) and its sidebar.

Every figure comes from a fixed number of queries whatever the fleet's size: the summary selector,
the attention nodes and their open events, the last events, and the samples of the sparkline nodes in
one query.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from slm_project.fleet import selectors
from slm_project.fleet.admin_views import age, heartbeat_age, severity_badge, state_badge
from slm_project.fleet.choices import EventKind, NodeState
from slm_project.fleet.models import HeartbeatSample, Node, NodeEvent

# Sparklines are drawn for the first nodes in attention-then-name order: a glance, not a monitor.
SPARKLINE_NODES = 12
SPARKLINE_WINDOW = timedelta(hours=1)
RECENT_EVENTS = 20
OPEN_EVENTS_SHOWN = 50
ATTENTION_SHOWN = 50
# States whose nodes send heartbeats worth a chart.
CHARTED_STATES = (
    NodeState.DEGRADED,
    NodeState.ONLINE,
    NodeState.RECOVERING,
    NodeState.DRAINING,
    NodeState.MAINTENANCE,
)


def dashboard_callback(request: HttpRequest, context: dict[str, Any]) -> dict[str, Any]:
    if request.user.has_perm("fleet.view_node"):
        context.update(fleet_overview(request))
    return context


def fleet_overview(request: HttpRequest) -> dict[str, Any]:
    now = timezone.now()
    overdue_before = selectors.heartbeat_overdue_before()
    summary = selectors.fleet_summary()
    node_url = _node_changelist_url()

    states = [
        {
            "state": state,
            "count": summary["by_state"].get(state, 0),
            "badge": state_badge(state),
            "url": f"{node_url}?state__exact={state}",
        }
        for state in NodeState.values
    ]

    open_events = list(selectors.node_events(needs_attention=True).select_related("node")[:OPEN_EVENTS_SHOWN])
    open_by_node: dict[Any, list[NodeEvent]] = defaultdict(list)
    for event in open_events:
        _decorate_event(event)
        open_by_node[event.node_id].append(event)

    attention_nodes = list(
        Node.objects.filter(pk__in=summary["needing_attention"]).order_by("name")[:ATTENTION_SHOWN]
    )
    attention = []
    for node in attention_nodes:
        reasons = []
        if node.state == NodeState.ERROR:
            reasons.append(f"error: {node.state_reason}" if node.state_reason else "in error")
        if node.state in (NodeState.ONLINE, NodeState.DEGRADED) and (
            node.last_heartbeat_at is None or node.last_heartbeat_at < overdue_before
        ):
            reasons.append(f"no heartbeat since {age(node.last_heartbeat_at, now=now)}")
        attention.append(
            {
                "node": node,
                "state": state_badge(node.state),
                "reasons": reasons,
                "events": open_by_node.get(node.pk, []),
            }
        )

    # Looked up on their own, not picked from the capped open list: none may be missed.
    host_key_alerts = list(
        selectors.node_events(needs_attention=True)
        .filter(kind=EventKind.HOST_KEY_CHANGED)
        .select_related("node")[:OPEN_EVENTS_SHOWN]
    )
    for event in host_key_alerts:
        _decorate_event(event)

    recent_events = list(selectors.node_events().select_related("node")[:RECENT_EVENTS])
    for event in recent_events:
        _decorate_event(event)

    chart_nodes = [node for node in attention_nodes if node.state != NodeState.DECOMMISSIONED]
    others = (
        Node.objects.filter(state__in=CHARTED_STATES)
        .exclude(pk__in=summary["needing_attention"])
        .order_by("name")[:SPARKLINE_NODES]
    )
    chart_nodes = (chart_nodes + list(others))[:SPARKLINE_NODES]
    series = sparkline_series([node.pk for node in chart_nodes], now=now)
    sparklines = [
        {
            "node": node,
            "key": str(node.pk),
            "state": state_badge(node.state),
            "heartbeat": heartbeat_age(node, overdue_before=overdue_before),
            "cpu": series[str(node.pk)]["cpu"][-1] if series.get(str(node.pk)) else None,
            "mem": series[str(node.pk)]["mem"][-1] if series.get(str(node.pk)) else None,
        }
        for node in chart_nodes
    ]

    return {
        "fleet": True,
        "title": "Fleet overview",
        "now": now,
        "total": summary["total"],
        "states": states,
        "by_role": summary["by_role"],
        "attention": attention,
        "attention_count": len(summary["needing_attention"]),
        "attention_hidden": max(0, len(summary["needing_attention"]) - len(attention_nodes)),
        "open_event_count": len(open_events),
        "host_key_alerts": host_key_alerts,
        "recent_events": recent_events,
        "sparklines": sparklines,
        "sparkline_series": series,
        "node_changelist_url": node_url,
        "event_changelist_url": reverse("admin:fleet_nodeevent_changelist"),
        "node_add_url": reverse("admin:fleet_node_add"),
        "overview_url": reverse("admin:index"),
    }


def sparkline_series(node_ids: list[Any], *, now: datetime) -> dict[str, dict[str, list]]:
    """CPU and memory of the last hour per node, from one query: ``{node id: {t, cpu, mem}}``."""
    if not node_ids:
        return {}
    rows = (
        HeartbeatSample.objects.filter(node_id__in=node_ids, sent_at__gte=now - SPARKLINE_WINDOW)
        .order_by("node_id", "sent_at")
        .values_list("node_id", "sent_at", "cpu_percent", "memory_percent")
    )
    series: dict[str, dict[str, list]] = {}
    for node_id, sent_at, cpu, memory in rows:
        entry = series.setdefault(str(node_id), {"t": [], "cpu": [], "mem": []})
        entry["t"].append(timezone.localtime(sent_at).strftime("%H:%M:%S"))
        entry["cpu"].append(round(cpu, 1))
        entry["mem"].append(round(memory, 1))
    return series


def _decorate_event(event: NodeEvent) -> None:
    event.severity_badge = severity_badge(event.severity)
    event.age = age(event.created_at)
    event.node_state_badge = state_badge(event.node.state)


def _node_changelist_url() -> str:
    return reverse("admin:fleet_node_changelist")


# --------------------------------------------------------------------------------------------------
# Sidebar (UNFOLD["SIDEBAR"]["navigation"]): the fleet first, then every other registered app


def sidebar_navigation(request: HttpRequest) -> list[dict[str, Any]]:
    open_events = ""
    if request.user.has_perm("fleet.view_nodeevent"):
        count = selectors.node_events(needs_attention=True).count()
        open_events = str(count) if count else ""
    fleet = {
        "title": "Fleet",
        "items": [
            {
                "title": "Overview",
                "icon": "monitoring",
                "link": reverse("admin:index"),
                "permission": _can("fleet.view_node"),
            },
            {
                "title": "Nodes",
                "icon": "dns",
                "link": reverse("admin:fleet_node_changelist"),
                "permission": _can("fleet.view_node"),
            },
            {
                "title": "Events",
                "icon": "notifications",
                "link": reverse("admin:fleet_nodeevent_changelist"),
                "badge": open_events,
                "badge_variant": "danger",
                "permission": _can("fleet.view_nodeevent"),
            },
            {
                "title": "Roles",
                "icon": "deployed_code",
                "link": reverse("admin:fleet_role_changelist"),
                "permission": _can("fleet.view_role"),
            },
        ],
    }
    groups = [fleet]
    for app in admin.site.get_app_list(request):
        if app["app_label"] == "fleet":
            continue
        groups.append(
            {
                "title": app["name"],
                "separator": True,
                "items": [
                    {
                        "title": model["name"],
                        "link": model["admin_url"],
                        "icon": _ICONS.get(model["object_name"]),
                    }
                    for model in app["models"]
                    if model.get("admin_url")
                ],
            }
        )
    return groups


_ICONS = {
    "User": "person",
    "Group": "group",
    "ApiClient": "api",
    "Credential": "key_vertical",
    "PeriodicTask": "schedule",
    "TaskResult": "task_alt",
}


def _can(permission: str):
    return lambda request: request.user.has_perm(permission)
