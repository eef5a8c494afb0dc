"""The SLM's URL map: the infrastructure API (``/api/v1/``), the ops portal (``/admin/``), probes and
the OpenAPI schema. Nothing here serves business features (the route test in tests/slm holds that)."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from slm_project.system import views as system_views

handler400 = "service_kit.errors.bad_request"
handler403 = "service_kit.errors.permission_denied"
handler404 = "service_kit.errors.page_not_found"
handler500 = "service_kit.errors.server_error"

api_v1 = [
    path("", include("slm_project.system.api.urls")),
    path("", include("slm_project.fleet.api.urls")),
    path("", include("slm_project.deployments.api.urls")),
]

urlpatterns = [
    path("healthz", system_views.healthz, name="healthz"),
    path("readyz", system_views.readyz, name="readyz"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
]
