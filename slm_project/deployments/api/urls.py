from django.urls import path

from slm_project.deployments.api import views

app_name = "deployments"

urlpatterns = [
    path("deployments", views.DeploymentListView.as_view(), name="deployment-list"),
    path("deployments/<uuid:deployment_id>", views.DeploymentDetailView.as_view(), name="deployment-detail"),
    path(
        "deployments/<uuid:deployment_id>/events",
        views.DeploymentEventsView.as_view(),
        name="deployment-events",
    ),
    path(
        "deployments/<uuid:deployment_id>/cancel",
        views.DeploymentCancelView.as_view(),
        name="deployment-cancel",
    ),
    path(
        "deployments/<uuid:deployment_id>/retry",
        views.DeploymentRetryView.as_view(),
        name="deployment-retry",
    ),
]
