"""The fleet in the ops portal: the overview (admin index), nodes, their events and the role registry.

Thin, like the API: every write goes through one service function (``node_create``, ``node_update``,
the node actions in ``admin_views``) with ``user:<name>`` as the actor, and a domain error becomes an
admin message. Secrets never reach a page: the agent token hash and the vault references are not
fields of any form or display here.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Count, Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from rest_framework.exceptions import APIException
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import action, display
from unfold.enums import ActionVariant

from slm_project.fleet import admin_views, dashboard, enrollment, selectors, services
from slm_project.fleet.admin_views import (
    NODE_ACTIONS,
    AttentionFilter,
    NodeForm,
    RoleFilter,
    actor_of,
    age,
    badge,
    badges,
    error_text,
    heartbeat_age,
    severity_badge,
    state_badge,
)
from slm_project.fleet.choices import NodeState
from slm_project.fleet.models import Node, NodeEvent, NodeRole, NodeStateTransition, Role, Service
from slm_project.fleet.states import can_transition

# The admin index is the fleet overview (context from ``fleet.dashboard.dashboard_callback``).
admin.site.index_template = "fleet/overview.html"
admin.site.index_title = "Fleet overview"

TIMELINE_LENGTH = 50
# Set on the request when a service refused a save, so the admin neither logs nor announces a change.
_SAVE_REFUSED = "_fleet_save_refused"


# --------------------------------------------------------------------------------------------------
# Nodes


class NodeRoleInline(TabularInline):
    """What the node should run and what its agent reports; assignment is the ``roles`` field above."""

    model = NodeRole
    fields = ("role", "desired_version", "actual_version", "status_badge", "updated_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    hide_title = True
    verbose_name = "role"
    verbose_name_plural = "Roles"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("role")

    @display(description="status")
    def status_badge(self, node_role: NodeRole) -> str:
        variants = {"active": "success", "failed": "danger", "drifted": "warning", "deploying": "info"}
        return badge(node_role.status, variants.get(node_role.status, "default"))


class ServiceInline(TabularInline):
    """Services as the node's agent last reported them (read-only: heartbeats own them)."""

    model = Service
    fields = ("name", "role", "port", "protocol", "state_badge", "discoverable", "updated_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    hide_title = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("role")

    @display(description="state")
    def state_badge(self, service: Service) -> str:
        variants = {"running": "success", "failed": "danger", "stopped": "warning"}
        return badge(service.state, variants.get(service.state, "default"))


def _node_action(name: str, *, url_path: str) -> Any:
    """An unfold detail action (a button on the node page) that opens the action's page."""
    spec = NODE_ACTIONS[name]

    def view(model_admin: ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
        return admin_views.node_action_view(model_admin, request, object_id, spec)

    view.__name__ = view.__qualname__ = name  # unfold finds its actions by method name
    return action(
        description=spec.title,
        url_path=url_path,
        icon=spec.icon,
        permissions=["change"],
        variant=ActionVariant.DANGER if spec.danger else ActionVariant.DEFAULT,
    )(view)


@admin.register(Node)
class NodeAdmin(ModelAdmin):
    form = NodeForm
    list_display = (
        "name",
        "address",
        "state_badge",
        "roles_badges",
        "heartbeat",
        "agent_version",
    )
    list_filter = ("state", RoleFilter)
    list_filter_submit = True
    search_fields = ("name", "address")
    search_help_text = "Name or address"
    list_per_page = 50
    inlines = (NodeRoleInline, ServiceInline)
    change_form_outer_after_template = "fleet/node_detail_extra.html"
    actions = ("test_connection_selected", "drain_selected", "resume_selected")
    actions_detail = (
        "test_connection",
        "enroll",
        "accept_host_key",
        "drain",
        "resume",
        "decommission",
    )
    add_fieldsets = ((None, {"fields": ("name", "address", ("ssh_user", "ssh_port"), "roles", "labels")}),)
    fieldsets = (
        ("Connection", {"fields": ("name", "address", ("ssh_user", "ssh_port"), "roles", "labels")}),
        ("Status", {"fields": ("state_display", "state_changed_at", "heartbeat_display", "agent_version")}),
        ("Facts", {"fields": ("os_display", "kernel", "cpus_display", "memory_display", "disk_display")}),
        (
            "SSH host key",
            {"fields": ("host_key_display", "pending_host_key_display", "supplied_fingerprint")},
        ),
    )
    # Everything below "Connection" is what the node reports or the workflows set: read-only.
    status_fields = tuple(field for _, options in fieldsets[1:] for field in options["fields"])

    # ---- queries

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        # The list selector prefetches the roles: the page's query count does not grow with its rows.
        return selectors.node_list()

    def get_readonly_fields(self, request: HttpRequest, obj: Node | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("name", *self.status_fields)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A decommissioned node is history: view only.
        if isinstance(obj, Node) and obj.state == NodeState.DECOMMISSIONED:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Nodes are decommissioned, not deleted: their history stays.
        return False

    # ---- list columns

    @display(description="state", ordering="state")
    def state_badge(self, node: Node) -> str:
        return state_badge(node.state)

    @display(description="roles")
    def roles_badges(self, node: Node) -> str:
        names = [node_role.role.name for node_role in node.roles_in_order()]
        return badges(names) if names else "-"

    @display(description="last heartbeat", ordering="last_heartbeat_at")
    def heartbeat(self, node: Node) -> str:
        return heartbeat_age(node)

    # ---- detail fields

    @display(description="roles")
    def roles(self, node: Node) -> str:
        # Shown in place of the roles field when the page is read-only (a decommissioned node).
        return self.roles_badges(node)

    @display(description="state")
    def state_display(self, node: Node) -> str:
        if node.state_reason:
            return format_html("{} <span class='ml-2'>{}</span>", state_badge(node.state), node.state_reason)
        return state_badge(node.state)

    @display(description="last heartbeat")
    def heartbeat_display(self, node: Node) -> str:
        if node.last_heartbeat_at is None:
            return "never"
        return format_html(
            "{} <span class='ml-2 text-font-subtle-light dark:text-font-subtle-dark'>{} · sequence {}</span>",
            heartbeat_age(node),
            node.last_heartbeat_at.strftime("%Y-%m-%d %H:%M:%S %Z"),
            node.last_heartbeat_sequence,
        )

    @display(description="OS")
    def os_display(self, node: Node) -> str:
        return node.os or "-"

    @display(description="CPUs")
    def cpus_display(self, node: Node) -> str:
        return str(node.cpus) if node.cpus else "-"

    @display(description="memory")
    def memory_display(self, node: Node) -> str:
        return f"{node.memory_mb / 1024:.1f} GiB" if node.memory_mb else "-"

    @display(description="root disk")
    def disk_display(self, node: Node) -> str:
        return f"{node.disk_gb} GB" if node.disk_gb else "-"

    @display(description="pinned host key")
    def host_key_display(self, node: Node) -> str:
        if not node.host_key_fingerprint:
            return badge("none pinned", "warning")
        return format_html(
            "{} <code class='ml-2'>{}</code>",
            badge(node.host_key_type or "key", "success"),
            node.host_key_fingerprint,
        )

    @display(description="awaiting acceptance")
    def pending_host_key_display(self, node: Node) -> str:
        if not node.pending_host_key_fingerprint:
            return "-"
        return format_html(
            "{} <code class='ml-2'>{}</code><span class='ml-2'>Compare it with the node's console, then use"
            " “Accept host key”.</span>",
            badge(node.pending_host_key_type or "key", "warning"),
            node.pending_host_key_fingerprint,
        )

    @display(description="fingerprint supplied for enrollment")
    def supplied_fingerprint(self, node: Node) -> str:
        return node.supplied_host_key_fingerprint or "-"

    # ---- the change page: timeline, transitions and the last hour's chart

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Node | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk:
            context.update(self._detail_context(obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _detail_context(self, node: Node) -> dict[str, Any]:
        events = list(selectors.node_events(node=node)[:TIMELINE_LENGTH])
        for event in events:
            event.severity_badge = severity_badge(event.severity)
            event.age = age(event.created_at)
        transitions = list(
            NodeStateTransition.objects.filter(node=node).order_by("-created_at", "-id")[:TIMELINE_LENGTH]
        )
        for transition in transitions:
            transition.from_badge = state_badge(transition.from_state)
            transition.to_badge = state_badge(transition.to_state)
        series = dashboard.sparkline_series([node.pk], now=timezone.now())
        return {
            "timeline": events,
            "transitions": transitions,
            "chart_key": str(node.pk),
            "chart_series": series,
            "events_url": reverse("admin:fleet_nodeevent_changelist") + f"?node__id__exact={node.pk}",
        }

    # ---- saving through the services

    def save_model(self, request: HttpRequest, obj: Node, form: forms.ModelForm, change: bool) -> None:
        data = form.cleaned_data
        try:
            if not change:
                node = services.node_create(
                    name=data["name"],
                    address=data["address"],
                    ssh_port=data["ssh_port"],
                    ssh_user=data["ssh_user"],
                    labels=data.get("labels") or {},
                    roles=list(data.get("roles") or []),
                    actor=actor_of(request),
                )
                # The admin goes on with `obj` (history entry, redirect): it must be the stored row.
                for field in Node._meta.concrete_fields:
                    setattr(obj, field.attname, getattr(node, field.attname))
                obj._state.adding = False
                obj._state.db = node._state.db
                return
            editable = {"address", "ssh_port", "ssh_user", "labels", "roles"}
            changes = {field: data[field] for field in form.changed_data if field in editable}
            if "roles" in changes:
                changes["roles"] = list(changes["roles"])
            if changes:
                # The form has already written its values onto `obj`: the service must judge the
                # change against the stored row (a pinned key freezes the connection fields).
                services.node_update(node=Node.objects.get(pk=obj.pk), actor=actor_of(request), **changes)
        except APIException as exc:
            setattr(request, _SAVE_REFUSED, True)
            messages.error(request, error_text(exc))

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        # Roles are saved by the service; the inlines are read-only.
        return

    def construct_change_message(
        self, request: HttpRequest, form: Any, formsets: Any, add: bool = False
    ) -> Any:
        # The inlines were not saved (read-only), so only the form's changes are history.
        return super().construct_change_message(request, form, [], add)

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        if not getattr(request, _SAVE_REFUSED, False):
            return super().log_addition(request, obj, message)
        return None

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        if not getattr(request, _SAVE_REFUSED, False):
            return super().log_change(request, obj, message)
        return None

    def response_add(
        self, request: HttpRequest, obj: Node, post_url_continue: str | None = None
    ) -> HttpResponse:
        if getattr(request, _SAVE_REFUSED, False):
            return HttpResponseRedirect(request.path)
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: Node) -> HttpResponse:
        if getattr(request, _SAVE_REFUSED, False):
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)

    # ---- detail actions (GET: the action's page; POST: one service call)

    def get_actions_detail(self, request: HttpRequest, object_id: Any) -> list:
        """Show the actions that make sense in the node's state (the services still judge every call)."""
        actions = super().get_actions_detail(request, object_id)
        try:
            node = (
                Node.objects.filter(pk=unquote(object_id))
                .only("state", "host_key", "pending_host_key")
                .first()
            )
        except (DjangoValidationError, ValueError):
            node = None  # not a node id: the change view answers with its "does not exist" redirect
        if node is None:
            return actions
        applicable = {
            "test_connection": node.state != NodeState.DECOMMISSIONED,
            "enroll": can_transition(node.state, NodeState.ENROLLING),
            "accept_host_key": bool(node.pending_host_key) and not node.host_key,
            "drain": can_transition(node.state, NodeState.DRAINING),
            "resume": node.state == NodeState.DRAINING or can_transition(node.state, NodeState.RECOVERING),
            "decommission": can_transition(node.state, NodeState.DECOMMISSIONED),
        }
        prefix = f"{self.opts.app_label}_{self.opts.model_name}_"
        return [a for a in actions if applicable.get(a.action_name.removeprefix(prefix), True)]

    test_connection = _node_action("test_connection", url_path="test-connection")
    enroll = _node_action("enroll", url_path="enroll")
    accept_host_key = _node_action("accept_host_key", url_path="accept-host-key")
    drain = _node_action("drain", url_path="drain")
    resume = _node_action("resume", url_path="resume")
    decommission = _node_action("decommission", url_path="decommission")

    # ---- bulk actions on the list (POST with CSRF by the changelist form)

    @admin.action(description="Test connection of the selected nodes", permissions=["change"])
    def test_connection_selected(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self._bulk(request, queryset, "queued a connection test", enrollment.node_connection_test_request)

    @admin.action(description="Drain the selected nodes", permissions=["change"])
    def drain_selected(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self._bulk(request, queryset, "draining", services.node_drain)

    @admin.action(description="Resume the selected nodes", permissions=["change"])
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        self._bulk(request, queryset, "resumed", services.node_resume)

    def _bulk(self, request: HttpRequest, queryset: QuerySet[Node], done: str, service: Any) -> None:
        """One service call per node, each in its own transaction: one refusal does not undo the rest."""
        succeeded = []
        for node in queryset:
            try:
                with transaction.atomic():
                    service(node=node, actor=actor_of(request))
            except APIException as exc:
                messages.error(request, error_text(exc))
            else:
                succeeded.append(node.name)
        if succeeded:
            messages.success(request, f"{', '.join(succeeded)}: {done}.")


# --------------------------------------------------------------------------------------------------
# Events


@admin.register(NodeEvent)
class NodeEventAdmin(ModelAdmin):
    """The lifecycle feed; read-only except for acknowledging what needs attention."""

    list_display = ("created_at", "node_link", "kind_code", "severity_badge", "message", "actor", "attention")
    list_filter = (AttentionFilter, "severity", "kind", "node__state")
    list_filter_submit = True
    search_fields = ("node__name", "message", "actor")
    search_help_text = "Node name, message or actor"
    list_select_related = ("node",)
    list_per_page = 50
    date_hierarchy = "created_at"
    actions = ("acknowledge_selected",)
    actions_detail = ("acknowledge",)
    fields = (
        "node",
        "kind",
        "severity",
        "message",
        "data",
        "actor",
        "needs_attention",
        "acknowledged_at",
        "acknowledged_by",
        "created_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_acknowledge_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("fleet.change_nodeevent")

    @display(description="node", ordering="node__name")
    def node_link(self, event: NodeEvent) -> str:
        url = reverse("admin:fleet_node_change", args=[event.node_id])
        return format_html(
            '<a class="font-medium text-primary-600 whitespace-nowrap" href="{}">{}</a>', url, event.node.name
        )

    @display(description="event", ordering="kind")
    def kind_code(self, event: NodeEvent) -> str:
        return format_html('<code class="whitespace-nowrap">{}</code>', event.kind)

    @display(description="severity", ordering="severity")
    def severity_badge(self, event: NodeEvent) -> str:
        return severity_badge(event.severity)

    @display(description="attention")
    def attention(self, event: NodeEvent) -> str:
        if not event.needs_attention:
            return "-"
        if event.acknowledged_at is None:
            return badge("open", "danger")
        return format_html(
            "{} <span class='ml-1'>{}</span>", badge("acknowledged", "default"), event.acknowledged_by
        )

    def get_actions_detail(self, request: HttpRequest, object_id: Any) -> list:
        """Offer "Acknowledge" only on an event that still waits for it."""
        actions = super().get_actions_detail(request, object_id)
        try:
            waiting = NodeEvent.objects.filter(
                pk=unquote(object_id), needs_attention=True, acknowledged_at__isnull=True
            ).exists()
        except (DjangoValidationError, ValueError):
            waiting = False
        return actions if waiting else []

    @admin.action(description="Acknowledge the selected events", permissions=["acknowledge"])
    def acknowledge_selected(self, request: HttpRequest, queryset: QuerySet[NodeEvent]) -> None:
        done = services.node_events_acknowledge(events=queryset, actor=actor_of(request))
        messages.success(request, f"{done} event(s) acknowledged.")

    @action(description="Acknowledge", url_path="acknowledge", icon="done_all", permissions=["acknowledge"])
    def acknowledge(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return admin_views.event_acknowledge_view(self, request, object_id)


# --------------------------------------------------------------------------------------------------
# Roles


@admin.register(Role)
class RoleAdmin(ModelAdmin):
    """The role registry as the code defines it (``fleet/registry.py``): read-only here."""

    list_display = ("name", "description", "services_list", "ports_list", "depends", "node_count", "playbook")
    search_fields = ("name", "description")
    fields = ("name", "description", "services", "ports", "health_probe", "depends_on", "playbook")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Role]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                nodes=Count(
                    "node_roles",
                    filter=~Q(node_roles__node__state=NodeState.DECOMMISSIONED),
                    distinct=True,
                )
            )
            .prefetch_related(Prefetch("depends_on", queryset=Role.objects.order_by("name")))
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @display(description="services")
    def services_list(self, role: Role) -> str:
        return ", ".join(role.services) or "-"

    @display(description="ports")
    def ports_list(self, role: Role) -> str:
        return ", ".join(str(port) for port in role.ports) or "-"

    @display(description="depends on")
    def depends(self, role: Role) -> str:
        names = [dependency.name for dependency in role.depends_on.all()]
        return badges(names) if names else "-"

    @display(description="nodes", ordering="nodes")
    def node_count(self, role: Role) -> int:
        return role.nodes
