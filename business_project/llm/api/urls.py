from django.urls import path

from business_project.llm.api import views

app_name = "llm"

urlpatterns = [
    path("providers/", views.ProviderListView.as_view(), name="provider-list"),
    path("providers/<uuid:provider_id>/health/", views.ProviderHealthView.as_view(), name="provider-health"),
]
