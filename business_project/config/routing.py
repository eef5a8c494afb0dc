"""Websocket routes of the business app; each app adds its consumers here (chat comes next)."""

from django.urls import path

from business_project.system.consumers import HealthConsumer

websocket_urlpatterns = [
    path("ws/healthz/", HealthConsumer.as_asgi()),
]
