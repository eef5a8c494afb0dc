"""Deployments in the ops portal: the list (status badges, filters), the wizard, the run page, cancel and
retry. Thin, like the API: every write is one service call (``admin_views``) with ``user:<name>`` as the
actor; the run page reads stored events only."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html
from unfold.admin import ModelAdmin
from unfold.decorators import display

from slm_project.deployments import admin_views, selectors
from slm_project.deployments.models import Deployment
from slm_project.fleet.admin_views import badges
from slm_project.fleet.models import Node
from slm_project.fleet.registry import ROLES


class RoleFilter(admin.SimpleListFilter):
    title = "role"
    parameter_name = "role"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in ROLES]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ROLES:
            return queryset.filter(pk__in=selectors.deployment_search(roles=[self.value()]).values("pk"))
        return queryset


class NodeFilter(admin.SimpleListFilter):
    title = "node"
    parameter_name = "node"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(pk), name) for pk, name in Node.objects.order_by("name").values_list("pk", "name")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        try:
            node_id = uuid.UUID(self.value())
        except ValueError:
            return queryset.none()
        return queryset.filter(pk__in=selectors.deployment_search(node_id=node_id).values("pk"))


@admin.register(Deployment)
class DeploymentAdmin(ModelAdmin):
    list_display = (
        "deployment",
        "status_badge",
        "roles_badges",
        "targets",
        "strategy",
        "attempts",
        "requested_by",
        "created_at",
    )
    list_display_links = None
    list_filter = ("status", "strategy", RoleFilter, NodeFilter)
    list_filter_submit = True
    search_fields = ("requested_by", "idempotency_key", "nodes__name")
    search_help_text = "Requested by, idempotency key or node name"
    list_per_page = 50

    # ---- queries and permissions

    def get_queryset(self, request: HttpRequest) -> QuerySet[Deployment]:
        # Nodes prefetched, attempts annotated: the list's query count does not grow with its rows.
        return selectors.deployment_search()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deployments are history: they end, they are not deleted here.
        return False

    # ---- pages

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("wizard/", wrap(self.wizard_view), name="deployments_deployment_wizard"),
            path(
                "<path:object_id>/progress/", wrap(self.progress_view), name="deployments_deployment_progress"
            ),
            path("<path:object_id>/cancel/", wrap(self.cancel_view), name="deployments_deployment_cancel"),
            path("<path:object_id>/retry/", wrap(self.retry_view), name="deployments_deployment_retry"),
            *super().get_urls(),
        ]

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        return HttpResponseRedirect(reverse(f"{self.admin_site.name}:deployments_deployment_wizard"))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        return admin_views.run_page_view(self, request, object_id)

    def wizard_view(self, request: HttpRequest) -> HttpResponse:
        return admin_views.wizard_view(self, request)

    def progress_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return admin_views.run_progress_view(self, request, object_id)

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return admin_views.confirm_view(self, request, object_id, "cancel")

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return admin_views.confirm_view(self, request, object_id, "retry")

    # ---- list columns

    @display(description="deployment", ordering="created_at")
    def deployment(self, deployment: Deployment) -> str:
        url = reverse(f"{self.admin_site.name}:deployments_deployment_change", args=[deployment.pk])
        return format_html(
            '<a class="font-medium text-primary-600 whitespace-nowrap fleet-mono" href="{}">{}</a>',
            url,
            str(deployment.pk)[:8],
        )

    @display(description="status", ordering="status")
    def status_badge(self, deployment: Deployment) -> str:
        return admin_views.status_badge(deployment.status)

    @display(description="roles")
    def roles_badges(self, deployment: Deployment) -> str:
        return badges(deployment.roles) if deployment.roles else "-"

    @display(description="nodes")
    def targets(self, deployment: Deployment) -> str:
        names = sorted(node.name for node in deployment.nodes.all())
        shown = ", ".join(names[:5])
        return f"{shown} +{len(names) - 5}" if len(names) > 5 else shown

    @display(description="attempts", ordering="attempts")
    def attempts(self, deployment: Deployment) -> int:
        return deployment.attempts
