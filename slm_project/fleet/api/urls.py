from django.urls import path

from slm_project.fleet.api import views

app_name = "fleet"

ACTIONS = ("drain", "resume", "accept-host-key", "enroll", "test-connection")

urlpatterns = [
    path("nodes", views.NodeListView.as_view(), name="node-list"),
    path("nodes/<uuid:node_id>", views.NodeDetailView.as_view(), name="node-detail"),
    path("nodes/<uuid:node_id>/heartbeat", views.HeartbeatView.as_view(), name="node-heartbeat"),
    path("nodes/<uuid:node_id>/events", views.NodeEventListView.as_view(), name="node-events"),
    path("nodes/<uuid:node_id>/metrics", views.NodeMetricsView.as_view(), name="node-metrics"),
    path("nodes/<uuid:node_id>/decommission", views.NodeDecommissionView.as_view(), name="node-decommission"),
    *[
        path(
            f"nodes/<uuid:node_id>/{action}",
            views.NodeActionView.as_view(action_name=action),
            name=f"node-{action}",
        )
        for action in ACTIONS
    ],
    path("events", views.EventListView.as_view(), name="event-list"),
    path("roles", views.RoleListView.as_view(), name="role-list"),
    path("services", views.ServiceListView.as_view(), name="service-list"),
    path("fleet/summary", views.FleetSummaryView.as_view(), name="fleet-summary"),
    path("discovery", views.DiscoveryView.as_view(), name="discovery"),
    path("discovery/<str:service>", views.ServiceDiscoveryView.as_view(), name="discovery-service"),
]
