"""The business URL map: business features, accounts, probes and the OpenAPI schema — nothing about
machines, fleets or deployments (the route test in tests/business holds that; those live in the SLM)."""

from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from business_project.system import views as system_views

handler400 = "service_kit.errors.bad_request"
handler403 = "service_kit.errors.permission_denied"
handler404 = "service_kit.errors.page_not_found"
handler500 = "service_kit.errors.server_error"

urlpatterns = [
    # The home page is the chat (which sends a signed-out visitor to the login page).
    path("", RedirectView.as_view(pattern_name="chat:page", permanent=False), name="home"),
    path("healthz", system_views.healthz, name="healthz"),
    path("readyz", system_views.readyz, name="readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/llm/", include("business_project.llm.api.urls")),
    path("api/auth/", include("business_project.accounts.api.urls")),
    path("api/", include("business_project.chat.api.urls")),
    path("accounts/", include("business_project.accounts.urls")),
    path("chat/", include("business_project.chat.urls")),
    # Users and (later) providers are managed here; nothing infrastructural is registered in this admin.
    path("admin/", admin.site.urls),
]
