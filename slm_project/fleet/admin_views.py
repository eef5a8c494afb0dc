"""The ops portal's node actions, its node form and list filters, and the badges its pages share.

Each action is a two-step page: GET shows what will happen and asks for what the service needs (a
reason, a typed confirmation, a fingerprint, an optional password); POST (with CSRF) calls exactly one
service function and reports the outcome with ``messages``. Domain errors (``APIException``
subclasses: ``TransitionNotAllowed``, ``Conflict``, ``ValidationError``) become error messages on the
same page, never 500s, and nothing is half-written: each action runs in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString
from rest_framework.exceptions import APIException
from rest_framework.exceptions import ValidationError as DrfValidationError
from unfold.widgets import (
    UnfoldAdminCheckboxSelectMultipleWidget,
    UnfoldAdminPasswordWidget,
    UnfoldAdminTextareaWidget,
    UnfoldAdminTextInputWidget,
    UnfoldBooleanWidget,
)

from slm_project.fleet import enrollment, selectors, services
from slm_project.fleet.choices import NodeState, RoleName, Severity
from slm_project.fleet.models import Node, NodeEvent

# --------------------------------------------------------------------------------------------------
# Badges: one colour language for states and severities on every page


_LABEL = (
    "inline-block font-semibold h-6 leading-6 px-2 rounded-default text-[11px] uppercase whitespace-nowrap"
)
_VARIANT_CLASSES = {
    "success": "bg-green-100 text-green-700 dark:bg-green-500/20 dark:text-green-400",
    "warning": "bg-orange-100 text-orange-700 dark:bg-orange-500/20 dark:text-orange-400",
    "danger": "bg-red-100 text-red-700 dark:bg-red-500/20 dark:text-red-400",
    "info": "bg-blue-100 text-blue-700 dark:bg-blue-500/20 dark:text-blue-400",
    "default": "bg-base-500/8 text-base-700 dark:bg-base-500/20 dark:text-base-200",
    # Decommissioned: history, not a live state; an outline keeps it out of the eye's way.
    "muted": "border border-dashed border-base-300 text-base-400 dark:border-base-700 dark:text-base-500",
}

STATE_VARIANTS: dict[str, str] = {
    NodeState.ONLINE: "success",
    NodeState.DEGRADED: "warning",
    NodeState.DRAINING: "warning",
    NodeState.RECOVERING: "warning",
    NodeState.ERROR: "danger",
    NodeState.MAINTENANCE: "info",
    NodeState.ENROLLING: "info",
    NodeState.PENDING: "default",
    NodeState.DECOMMISSIONED: "muted",
}
SEVERITY_VARIANTS: dict[str, str] = {
    Severity.INFO: "default",
    Severity.WARNING: "warning",
    Severity.CRITICAL: "danger",
}


def badge(text: str, variant: str = "default") -> SafeString:
    return format_html(
        '<span class="{} {}">{}</span>',
        _LABEL,
        _VARIANT_CLASSES.get(variant, _VARIANT_CLASSES["default"]),
        text,
    )


def state_badge(state: str) -> SafeString:
    return badge(state, STATE_VARIANTS.get(state, "default"))


def severity_badge(severity: str) -> SafeString:
    return badge(severity, SEVERITY_VARIANTS.get(severity, "default"))


def badges(texts: list[str], variant: str = "default") -> SafeString:
    return format_html(
        '<span class="flex flex-wrap gap-1">{}</span>',
        format_html_join("", "{}", ((badge(text, variant),) for text in texts)),
    )


def age(moment: datetime | None, *, now: datetime | None = None) -> str:
    """'42 s ago', '5 min ago', '3 h ago', '2 d ago': short enough for a table cell."""
    if moment is None:
        return "never"
    seconds = max(0, int(((now or timezone.now()) - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def heartbeat_age(node: Node, *, overdue_before: datetime | None = None) -> SafeString | str:
    """The age of the last heartbeat, amber when a node that should report has gone quiet."""
    text = age(node.last_heartbeat_at)
    expects_heartbeats = node.state in (NodeState.ONLINE, NodeState.DEGRADED)
    if expects_heartbeats:
        overdue_before = overdue_before or selectors.heartbeat_overdue_before()
        if node.last_heartbeat_at is None or node.last_heartbeat_at < overdue_before:
            return badge(text, "warning")
    return text


# --------------------------------------------------------------------------------------------------
# Helpers shared by the admin classes


def actor_of(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


def error_text(exc: APIException) -> str:
    """An ``APIException``'s detail as one sentence for an admin message."""
    detail = exc.detail
    if isinstance(detail, dict):
        parts = []
        for field, errors in detail.items():
            text = " ".join(str(error) for error in (errors if isinstance(errors, list) else [errors]))
            parts.append(
                text if field in ("non_field_errors", "detail") else f"{field.replace('_', ' ')}: {text}"
            )
        return " ".join(parts)
    if isinstance(detail, list):
        return " ".join(str(error) for error in detail)
    return str(detail)


# --------------------------------------------------------------------------------------------------
# Action forms


class ReasonForm(forms.Form):
    reason = forms.CharField(
        required=False,
        max_length=500,
        widget=UnfoldAdminTextInputWidget,
        help_text="Recorded with the state transition.",
    )


class ConfirmForm(forms.Form):
    """Nothing to ask: the page itself is the confirmation."""


class EnrollForm(forms.Form):
    password = forms.CharField(
        required=False,
        strip=False,
        # render_value=False: a failed submit never sends the password back to the browser;
        # new-password keeps the browser from filling in the operator's own saved login.
        widget=UnfoldAdminPasswordWidget(attrs={"autocomplete": "new-password"}, render_value=False),
        help_text=(
            "Optional, write-only. A password of the SSH user, used once to install the SLM's SSH key;"
            " sealed in the vault and deleted when enrollment ends."
        ),
    )
    host_key_fingerprint = forms.CharField(
        required=False,
        max_length=100,
        widget=UnfoldAdminTextInputWidget(attrs={"placeholder": "SHA256:…", "autocomplete": "off"}),
        help_text=(
            "Optional when the key is already pinned. The fingerprint you read on the node's console"
            " (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); the key is pinned only if the node"
            " presents it."
        ),
    )


class AcceptHostKeyForm(forms.Form):
    fingerprint = forms.CharField(
        max_length=100,
        widget=UnfoldAdminTextInputWidget(attrs={"placeholder": "SHA256:…", "autocomplete": "off"}),
        help_text="Type the fingerprint shown above after comparing it with the node's console.",
    )


class DecommissionForm(forms.Form):
    confirm_name = forms.CharField(
        label="Node name",
        max_length=63,
        widget=UnfoldAdminTextInputWidget(attrs={"autocomplete": "off"}),
        help_text="Type the node's name to confirm.",
    )
    reason = forms.CharField(required=False, max_length=500, widget=UnfoldAdminTextInputWidget)
    cleanup = forms.BooleanField(
        label="Clean up the machine first",
        required=False,
        initial=True,
        widget=UnfoldBooleanWidget,
        help_text=(
            "Runs decommission.yml: stops and removes every AutoBot service and file, then the SLM's SSH key;"
            " the node is decommissioned when it succeeds. Untick for a machine that is gone or unreachable."
        ),
    )
    purge_data = forms.BooleanField(
        label="Delete data directories too",
        required=False,
        initial=False,
        widget=UnfoldBooleanWidget,
        help_text="With cleanup: the services' data (e.g. /var/lib/autobot, /var/lib/redis) is deleted too.",
    )


# --------------------------------------------------------------------------------------------------
# The node form and the list filters (for ``admin.py``)


class NodeForm(forms.ModelForm):
    """The operator-editable part of a node. State, facts, host keys, tokens and credentials are not
    form fields at all: they change only through the actions and the enrollment workflow."""

    roles = forms.MultipleChoiceField(
        # Shown as the registry spells them (the names deployments, filters and the API use).
        choices=[(name, name) for name in RoleName.values],
        required=False,
        widget=UnfoldAdminCheckboxSelectMultipleWidget,
        help_text="Roles this node should run; deployments install them.",
    )

    class Meta:
        model = Node
        fields = ("name", "address", "ssh_port", "ssh_user", "labels")
        labels = {"ssh_port": "SSH port", "ssh_user": "SSH user"}
        widgets = {"labels": UnfoldAdminTextareaWidget(attrs={"rows": 3})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and "roles" in self.fields:
            self.fields["roles"].initial = [
                node_role.role.name for node_role in self.instance.node_roles.all()
            ]

    def clean_address(self) -> str:
        try:
            return services.validate_address(self.cleaned_data["address"])
        except DrfValidationError as exc:
            raise forms.ValidationError(error_text(exc).removeprefix("address: ")) from None


class RoleFilter(admin.SimpleListFilter):
    title = "role"
    parameter_name = "role"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in RoleName.values]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value():
            return queryset.filter(node_roles__role__name=self.value()).distinct()
        return queryset


class AttentionFilter(admin.SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("open", "Needs attention"), ("acknowledged", "Acknowledged")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "open":
            return queryset.filter(needs_attention=True, acknowledged_at__isnull=True)
        if self.value() == "acknowledged":
            return queryset.filter(needs_attention=True, acknowledged_at__isnull=False)
        return queryset


# --------------------------------------------------------------------------------------------------
# Node actions: each calls exactly one service function


@dataclass(frozen=True)
class NodeAction:
    name: str
    title: str
    icon: str
    explanation: str
    submit_label: str
    form_class: type[forms.Form]
    perform: Callable[[Node, dict[str, Any], str], str]  # (node, cleaned data, actor) -> success message
    danger: bool = False


def _test_connection(node: Node, data: dict[str, Any], actor: str) -> str:
    enrollment.node_connection_test_request(node=node, actor=actor)
    return f"Connection test of {node.name} queued; its result appears in the event timeline."


def _enroll(node: Node, data: dict[str, Any], actor: str) -> str:
    node = enrollment.node_enroll_request(
        node=node,
        actor=actor,
        password=data.get("password") or None,
        host_key_fingerprint=data.get("host_key_fingerprint") or None,
    )
    return f"Enrollment of {node.name} started: the node is {node.state}."


def _accept_host_key(node: Node, data: dict[str, Any], actor: str) -> str:
    node = services.node_host_key_accept(node=node, fingerprint=data["fingerprint"], actor=actor)
    return f"Host key {node.host_key_fingerprint} is pinned for {node.name}."


def _drain(node: Node, data: dict[str, Any], actor: str) -> str:
    node = services.node_drain(node=node, actor=actor, reason=data.get("reason", ""))
    return f"{node.name} is {node.state}: it leaves discovery while its work finishes."


def _resume(node: Node, data: dict[str, Any], actor: str) -> str:
    node = services.node_resume(node=node, actor=actor, reason=data.get("reason", ""))
    return f"{node.name} is {node.state} again."


def _decommission(node: Node, data: dict[str, Any], actor: str) -> str:
    node = services.node_decommission(
        node=node,
        confirm_name=data["confirm_name"],
        actor=actor,
        reason=data.get("reason", ""),
        cleanup=bool(data.get("cleanup")),
        purge_data=bool(data.get("purge_data")),
    )
    if node.state != NodeState.DECOMMISSIONED:
        return (
            f"Decommission of {node.name} started: a run removes AutoBot from the machine, and the node is"
            " decommissioned when it succeeds (see its event timeline and the deployments)."
        )
    return f"{node.name} is {node.state}: its agent token no longer works and it left discovery."


NODE_ACTIONS: dict[str, NodeAction] = {
    action.name: action
    for action in (
        NodeAction(
            name="test_connection",
            title="Test connection",
            icon="cable",
            explanation=(
                "Queues a connection test: the SLM reads the node's SSH host key (capturing it for your"
                " acceptance when none is pinned) and, with a pinned key, checks that it can log in."
                " The state does not change; the result appears in the event timeline."
            ),
            submit_label="Queue the test",
            form_class=ConfirmForm,
            perform=_test_connection,
        ),
        NodeAction(
            name="enroll",
            title="Enroll",
            icon="how_to_reg",
            explanation=(
                "Moves the node to enrolling and queues the enrollment: connect with the pinned host key,"
                " install the SLM's SSH key (with the password, if you give one), gather facts and issue"
                " the agent token. A failure leaves the node in error with the reason."
            ),
            submit_label="Start enrollment",
            form_class=EnrollForm,
            perform=_enroll,
        ),
        NodeAction(
            name="accept_host_key",
            title="Accept host key",
            icon="key",
            explanation=(
                "Pins the host key the node presented. Every later connection is refused if the node"
                " presents another key."
            ),
            submit_label="Pin this key",
            form_class=AcceptHostKeyForm,
            perform=_accept_host_key,
        ),
        NodeAction(
            name="drain",
            title="Drain",
            icon="pause_circle",
            explanation=(
                "Takes the node out of service discovery so no new traffic reaches it; resume it later"
                " to bring it back through recovering to online."
            ),
            submit_label="Drain",
            form_class=ReasonForm,
            perform=_drain,
        ),
        NodeAction(
            name="resume",
            title="Resume",
            icon="play_circle",
            explanation="Brings a drained, maintained or failed node back through recovering to online.",
            submit_label="Resume",
            form_class=ReasonForm,
            perform=_resume,
        ),
        NodeAction(
            name="decommission",
            title="Decommission",
            icon="delete_forever",
            explanation=(
                "Terminal: the node's agent token stops working and its services leave discovery."
                " With cleanup, a run first stops and removes every AutoBot service and file from the"
                " machine (data directories only if you ask) and, last, the SLM's SSH key; the node is"
                " decommissioned when that run succeeds, and stays as it is if it fails."
                " A decommissioned node cannot come back; register the machine again instead."
            ),
            submit_label="Decommission",
            form_class=DecommissionForm,
            perform=_decommission,
            danger=True,
        ),
    )
}


def node_action_view(
    model_admin: Any, request: HttpRequest, object_id: str, action: NodeAction
) -> HttpResponse:
    """GET: the action's page. POST: run it, then back to the node (success) or the page (error)."""
    node = model_admin.get_object(request, unquote(object_id))
    if node is None:
        return model_admin._get_obj_does_not_exist_redirect(request, model_admin.opts, object_id)
    change_url = reverse(f"{model_admin.admin_site.name}:fleet_node_change", args=[node.pk])
    if request.method == "POST":
        form = action.form_class(request.POST)
        if form.is_valid():
            try:
                with transaction.atomic():
                    message = action.perform(node, form.cleaned_data, actor_of(request))
            except APIException as exc:
                messages.error(request, error_text(exc))
                node.refresh_from_db()
            else:
                messages.success(request, message)
                return HttpResponseRedirect(change_url)
    else:
        form = action.form_class()
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{action.title}: {node.name}",
        "opts": model_admin.opts,
        "node": node,
        "node_state": state_badge(node.state),
        "action": action,
        "form": form,
        "change_url": change_url,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "fleet/node_action.html", context)


def event_acknowledge_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """GET: what is being acknowledged. POST: acknowledge it and go back where the operator came from."""
    event = model_admin.get_object(request, unquote(object_id))
    if event is None:
        return model_admin._get_obj_does_not_exist_redirect(request, model_admin.opts, object_id)
    back = _safe_next(request) or reverse(f"{model_admin.admin_site.name}:fleet_nodeevent_changelist")
    if request.method == "POST":
        done = services.node_events_acknowledge(
            events=NodeEvent.objects.filter(pk=event.pk), actor=actor_of(request)
        )
        if done:
            messages.success(request, f"Acknowledged: {event.node.name} — {event.message}")
        else:
            messages.info(request, "This event needed no acknowledgement (any more).")
        return HttpResponseRedirect(back)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Acknowledge: {event.kind} on {event.node.name}",
        "opts": model_admin.opts,
        "event": event,
        "severity": severity_badge(event.severity),
        "back": back,
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "fleet/event_acknowledge.html", context)


def _safe_next(request: HttpRequest) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return ""
