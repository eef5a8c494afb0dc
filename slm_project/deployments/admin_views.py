"""The ops portal's deployment pages: the wizard, the run page with its progress feed, cancel and retry.

- **Wizard** (``wizard/``): one form (nodes that take deployments, roles that have an Ansible role, the
  strategy and its options, each chosen role's allowlisted variables), then a confirm page that shows
  the request as the SLM will run it; confirming calls ``services.deployment_request`` once (the page
  carries an idempotency key, so a double submit makes one deployment).
- **Run page** (the deployment's change page): the attempt's status, tasks started (of the tasks of the
  last successful run of the same roles), per-host results and the event log. Its script polls
  ``progress/?after=<counter>`` every second while the run is live; the JSON comes from the stored
  events, never from a worker's logs.
- **Cancel / retry**: a confirmation page (GET) and one service call (POST with CSRF). Domain errors
  become error messages, never 500s.
"""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.safestring import SafeString
from rest_framework.exceptions import APIException
from unfold.widgets import (
    UnfoldAdminCheckboxSelectMultipleWidget,
    UnfoldAdminIntegerFieldWidget,
    UnfoldAdminRadioSelectWidget,
    UnfoldAdminTextInputWidget,
)

from slm_project.deployments import selectors, services
from slm_project.deployments.choices import FINISHED, RunStatus, Strategy
from slm_project.deployments.constants import EXTRA_VAR_MAX_CHARS
from slm_project.deployments.models import Deployment, DeploymentRun
from slm_project.fleet.admin_views import actor_of, badge, error_text
from slm_project.fleet.models import Node
from slm_project.fleet.registry import ROLES, dependency_order

# How many events one poll of the run page brings at most (it asks again at once when there are more).
EVENTS_PER_POLL = 500
POLL_INTERVAL_MS = 1000

STATUS_VARIANTS: dict[str, str] = {
    RunStatus.QUEUED: "default",
    RunStatus.RUNNING: "info",
    RunStatus.SUCCEEDED: "success",
    RunStatus.FAILED: "danger",
    RunStatus.CANCELED: "warning",
    RunStatus.TIMED_OUT: "danger",
    RunStatus.LOST: "danger",
}
HOST_VARIANTS = {
    "ok": "success",
    "changed": "warning",
    "failed": "danger",
    "unreachable": "danger",
    "pending": "default",
}


BADGE_VARIANTS = ("success", "warning", "danger", "info", "default")


def status_badge(status: str) -> SafeString:
    return badge(status.replace("_", " "), STATUS_VARIANTS.get(status, "default"))


def host_status(counts: dict[str, int]) -> str:
    """One word for a host's results so far: the worst thing that happened to it."""
    for status in ("unreachable", "failed", "changed", "ok"):
        if counts.get(status):
            return status
    return "pending"


def deployable_roles() -> list[str]:
    """Registry roles that have an Ansible role, in dependency order."""
    return [name for name in ROLES if services.role_is_deployable(name)]


def _check_permission(allowed: bool) -> None:
    if not allowed:
        raise PermissionDenied


# --------------------------------------------------------------------------------------------------
# The wizard


def _variable_field(variable: str) -> str:
    return f"var__{variable}"


class DeploymentWizardForm(forms.Form):
    """The request, shaped; ``services.deployment_create`` judges it again when it is confirmed."""

    nodes = forms.ModelMultipleChoiceField(
        queryset=Node.objects.none(),
        widget=UnfoldAdminCheckboxSelectMultipleWidget,
        help_text="Only nodes that take deployments: enrolled, not decommissioned.",
    )
    roles = forms.MultipleChoiceField(
        choices=(),
        widget=UnfoldAdminCheckboxSelectMultipleWidget,
        help_text="Only roles with an Ansible role; they run in dependency order.",
    )
    strategy = forms.ChoiceField(
        choices=Strategy.choices, initial=Strategy.ALL_AT_ONCE, widget=UnfoldAdminRadioSelectWidget
    )
    batch_size = forms.IntegerField(
        required=False,
        min_value=1,
        widget=UnfoldAdminIntegerFieldWidget,
        help_text="Rolling: nodes per batch (or give a percentage).",
    )
    batch_percent = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=100,
        widget=UnfoldAdminIntegerFieldWidget,
        help_text="Rolling: percent of the nodes per batch, rounded up.",
    )
    idempotency_key = forms.CharField(required=False, max_length=100, widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["nodes"].queryset = Node.objects.exclude(state__in=services.UNDEPLOYABLE_STATES).order_by(
            "name"
        )
        self.fields["nodes"].label_from_instance = lambda node: f"{node.name} · {node.address} · {node.state}"
        roles = deployable_roles()
        self.fields["roles"].choices = [(name, f"{name} — {ROLES[name].description}") for name in roles]
        # One optional field per allowlisted variable; the page shows a role's fields when it is chosen.
        self.role_variables: dict[str, list[str]] = {}
        for role in roles:
            for variable in ROLES[role].variables:
                name = _variable_field(variable)
                if name in self.fields:
                    continue
                self.fields[name] = forms.CharField(
                    label=variable,
                    required=False,
                    max_length=EXTRA_VAR_MAX_CHARS,
                    widget=UnfoldAdminTextInputWidget(attrs={"autocomplete": "off"}),
                )
                self.role_variables.setdefault(role, []).append(name)

    def variable_groups(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [(role, [self[name] for name in names]) for role, names in self.role_variables.items()]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        roles = data.get("roles") or []
        allowed = {variable for role in roles for variable in ROLES[role].variables}
        for role_fields in self.role_variables.values():
            for name in role_fields:
                variable = name.removeprefix("var__")
                if data.get(name) and variable not in allowed:
                    self.add_error(
                        name, f"{variable} is not a variable of {', '.join(roles) or 'the chosen roles'}."
                    )
        rolling = data.get("strategy") == Strategy.ROLLING
        if rolling and (data.get("batch_size") is None) == (data.get("batch_percent") is None):
            self.add_error("batch_size", "A rolling deployment takes a batch size or a batch percentage.")
        return data

    def request(self) -> dict[str, Any]:
        """The arguments of ``services.deployment_request`` (without the actor)."""
        data = self.cleaned_data
        options: dict[str, Any] = {}
        if data["strategy"] == Strategy.ROLLING:
            for option in ("batch_size", "batch_percent"):
                if data.get(option) is not None:
                    options[option] = data[option]
        extra_vars = {
            name.removeprefix("var__"): data[name]
            for names in self.role_variables.values()
            for name in names
            if data.get(name)
        }
        return {
            "node_ids": [node.pk for node in data["nodes"]],
            "roles": list(data["roles"]),
            "strategy": data["strategy"],
            "strategy_options": options,
            "extra_vars": extra_vars,
            "idempotency_key": data.get("idempotency_key") or "",
        }


_FIELD_OF_SERVICE_ERROR = {
    "nodes": "nodes",
    "roles": "roles",
    "strategy": "strategy",
    "strategy_options": "batch_size",
}


def _service_errors_onto(form: DeploymentWizardForm, exc: APIException) -> None:
    """A refusal of the service, shown where the operator can fix it."""
    detail = exc.detail
    if isinstance(detail, dict):
        for key, errors in detail.items():
            messages_ = [str(error) for error in (errors if isinstance(errors, list) else [errors])]
            field = _FIELD_OF_SERVICE_ERROR.get(str(key))
            for message in messages_:
                form.add_error(field, message if field else f"{str(key).replace('_', ' ')}: {message}")
    else:
        form.add_error(None, error_text(exc))


def wizard_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """GET: the form. POST ``stage=review``: the confirm page. POST ``stage=confirm``: the request."""
    _check_permission(model_admin.has_add_permission(request))
    stage = request.POST.get("stage", "") if request.method == "POST" else ""
    form = DeploymentWizardForm(request.POST or None, initial={"idempotency_key": f"wizard-{uuid.uuid4()}"})
    confirming = False
    if stage in ("review", "confirm") and form.is_valid():
        if stage == "confirm":
            try:
                deployment, created = services.deployment_request(
                    **form.request(), requested_by=actor_of(request)
                )
            except APIException as exc:
                _service_errors_onto(form, exc)
            else:
                if created:
                    messages.success(request, f"Deployment of {', '.join(deployment.roles)} queued.")
                else:
                    messages.info(request, "This request was submitted already; here is its deployment.")
                return HttpResponseRedirect(
                    reverse(
                        f"{model_admin.admin_site.name}:deployments_deployment_change", args=[deployment.pk]
                    )
                )
        else:
            confirming = True
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Review the deployment" if confirming else "New deployment",
        "opts": model_admin.opts,
        "form": form,
        "confirming": confirming,
        "summary": _summary(form) if confirming else None,
        "changelist_url": reverse(f"{model_admin.admin_site.name}:deployments_deployment_changelist"),
        "role_variables": {
            role: [name.removeprefix("var__") for name in names]
            for role, names in form.role_variables.items()
        },
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, "deployments/wizard.html", context)


def _summary(form: DeploymentWizardForm) -> dict[str, Any]:
    data = form.request()
    options = data["strategy_options"]
    return {
        "nodes": list(form.cleaned_data["nodes"]),
        "roles": dependency_order(data["roles"]),
        "strategy": Strategy(data["strategy"]).label,
        "options": ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in options.items()),
        "extra_vars": sorted(data["extra_vars"].items()),
    }


# --------------------------------------------------------------------------------------------------
# The run page and its progress feed


def _deployment_or_none(model_admin: Any, request: HttpRequest, object_id: str) -> Deployment | None:
    try:
        return selectors.deployment_detail(deployment_id=uuid.UUID(str(unquote(object_id))))
    except ValueError:
        return None


def _run_of(request: HttpRequest, deployment: Deployment) -> DeploymentRun | None:
    attempt = request.GET.get("attempt", "")
    return selectors.deployment_run(
        deployment=deployment, attempt=int(attempt) if attempt.isdigit() else None
    )


def run_progress(*, deployment: Deployment, run: DeploymentRun, after: int, limit: int) -> dict[str, Any]:
    """What the run page shows, as JSON: the run, its task and host progress and the events after
    ``after``. The run is read first: when it says finished, its events are all stored already."""
    run.refresh_from_db()
    events = list(selectors.run_events(run=run, after=after, limit=limit + 1))
    has_more = len(events) > limit
    events = events[:limit]
    hosts = {node.name: {} for node in deployment.nodes.all()}
    hosts.update(selectors.run_host_progress(run=run))
    finished = run.status in FINISHED
    return {
        "deployment": {"id": str(deployment.pk), "roles": deployment.roles},
        "run": {
            "id": str(run.pk),
            "attempt": run.attempt,
            "status": run.status,
            "status_reason": run.status_reason,
            "finished": finished,
            "cancel_requested": run.cancel_requested_at is not None,
            "events_emitted": run.events_emitted,
            "events_stored": run.events_stored,
            "started_at": run.started_at.isoformat() if run.started_at else None,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        },
        "tasks": selectors.run_task_progress(run=run),
        # The run's plan (one step for all_at_once; a batch or a role per step for the other strategies).
        "steps": [
            {
                "name": str(step.get("name", "")),
                "status": str(step.get("status", "")),
                "reason": str(step.get("reason", "")),
            }
            for step in (run.steps or [])
        ],
        "hosts": [
            {
                "host": host,
                "status": host_status(counts),
                **{key: counts.get(key, 0) for key in ("ok", "changed", "failed", "unreachable", "skipped")},
            }
            for host, counts in sorted(hosts.items())
        ],
        "events": [
            {
                "counter": event.counter,
                "created_at": event.created_at.isoformat(),
                "event": event.event,
                "host": event.host,
                "task": event.task,
                "changed": event.changed,
                "failed": event.failed,
                "stdout": event.stdout,
            }
            for event in events
        ],
        "next_after": events[-1].counter if events else after,
        "has_more": has_more,
        "can_cancel": not finished,
        "can_retry": run.status in services.RETRYABLE,
    }


def run_page_view(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    _check_permission(model_admin.has_view_or_change_permission(request))
    deployment = _deployment_or_none(model_admin, request, object_id)
    if deployment is None:
        return model_admin._get_obj_does_not_exist_redirect(request, model_admin.opts, object_id)
    run = _run_of(request, deployment)
    if run is None:
        messages.error(request, f"This deployment has no attempt {request.GET.get('attempt')}.")
        return HttpResponseRedirect(request.path)
    site = model_admin.admin_site.name
    progress_url = reverse(f"{site}:deployments_deployment_progress", args=[deployment.pk])
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Deployment {str(deployment.pk)[:8]}",
        "opts": model_admin.opts,
        "deployment": deployment,
        "run": run,
        "runs": [(other, status_badge(other.status)) for other in deployment.runs.all()],
        "status": status_badge(run.status),
        "strategy": Strategy(deployment.strategy).label
        if deployment.strategy in Strategy.values
        else deployment.strategy,
        "nodes": list(deployment.nodes.all()),
        "finished": run.status in FINISHED,
        "retryable": run.status in services.RETRYABLE,
        "run_config": {
            "progressUrl": f"{progress_url}?attempt={run.attempt}",
            "interval": POLL_INTERVAL_MS,
            # Badges the script fills in: the same markup as the server's, with the text escaped.
            "badges": {variant: str(badge("__TEXT__", variant)) for variant in BADGE_VARIANTS},
            "statusVariants": STATUS_VARIANTS,
            "hostVariants": HOST_VARIANTS,
        },
        "may_change": model_admin.has_change_permission(request),
        "cancel_url": reverse(f"{site}:deployments_deployment_cancel", args=[deployment.pk]),
        "retry_url": reverse(f"{site}:deployments_deployment_retry", args=[deployment.pk]),
        "changelist_url": reverse(f"{site}:deployments_deployment_changelist"),
        "is_latest": run.attempt == max(other.attempt for other in deployment.runs.all()),
    }
    request.current_app = site
    return TemplateResponse(request, "deployments/run.html", context)


def run_progress_view(model_admin: Any, request: HttpRequest, object_id: str) -> JsonResponse:
    """``progress/?attempt=N&after=<counter>``: the run page's feed (JSON, the admin session)."""
    _check_permission(model_admin.has_view_or_change_permission(request))
    deployment = _deployment_or_none(model_admin, request, object_id)
    run = _run_of(request, deployment) if deployment is not None else None
    if run is None:
        return JsonResponse({"error": "No such deployment or attempt."}, status=404)
    after = request.GET.get("after", "0")
    if not after.isdigit():
        return JsonResponse({"error": "after is a counter (0 or more)."}, status=400)
    return JsonResponse(run_progress(deployment=deployment, run=run, after=int(after), limit=EVENTS_PER_POLL))


# --------------------------------------------------------------------------------------------------
# Cancel and retry


CONFIRMATIONS = {
    "cancel": {
        "title": "Cancel",
        "icon": "cancel",
        "explanation": (
            "A queued attempt ends at once. A running one is asked to stop: its executor stops Ansible"
            " within a second and ends the attempt canceled. Hosts keep what the finished tasks changed."
        ),
        "submit_label": "Cancel the deployment",
        "danger": True,
    },
    "retry": {
        "title": "Retry",
        "icon": "replay",
        "explanation": (
            "Queues a new attempt of the same request (nodes, roles, strategy, variables). The nodes are"
            " checked again: one that was decommissioned since is refused."
        ),
        "submit_label": "Queue a new attempt",
        "danger": False,
    },
}


def _cancel(deployment: Deployment, actor: str) -> str:
    run = services.deployment_cancel(deployment=deployment, actor=actor)
    if run.status == RunStatus.CANCELED:
        return f"Attempt {run.attempt} canceled."
    return f"Attempt {run.attempt} was asked to stop; it ends canceled in a moment."


def _retry(deployment: Deployment, actor: str) -> str:
    run = services.deployment_retry(deployment=deployment, actor=actor)
    return f"Attempt {run.attempt} queued."


def confirm_view(model_admin: Any, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
    """GET: what the action will do. POST: do it (one service call), then back to the run page."""
    _check_permission(model_admin.has_change_permission(request))
    deployment = _deployment_or_none(model_admin, request, object_id)
    if deployment is None:
        return model_admin._get_obj_does_not_exist_redirect(request, model_admin.opts, object_id)
    site = model_admin.admin_site.name
    run_url = reverse(f"{site}:deployments_deployment_change", args=[deployment.pk])
    if request.method == "POST":
        perform = _cancel if action == "cancel" else _retry
        try:
            messages.success(request, perform(deployment, actor_of(request)))
        except APIException as exc:
            messages.error(request, error_text(exc))
        return HttpResponseRedirect(run_url)
    run = selectors.deployment_run(deployment=deployment)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{CONFIRMATIONS[action]['title']}: deployment {str(deployment.pk)[:8]}",
        "opts": model_admin.opts,
        "deployment": deployment,
        "run": run,
        "status": status_badge(run.status) if run else "",
        "action": CONFIRMATIONS[action],
        "run_url": run_url,
    }
    request.current_app = site
    return TemplateResponse(request, "deployments/confirm.html", context)
