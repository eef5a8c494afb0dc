from django.urls import path

from slm_project.system.api.views import MetaView

app_name = "system"

urlpatterns = [
    path("meta", MetaView.as_view(), name="meta"),
]
