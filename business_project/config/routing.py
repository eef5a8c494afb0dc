"""Websocket routes of the business app; each app adds its consumers here."""

from django.urls import path

from business_project.chat.routing import websocket_urlpatterns as chat_websocket_urlpatterns
from business_project.system.consumers import HealthConsumer

websocket_urlpatterns = [
    path("ws/healthz/", HealthConsumer.as_asgi()),
    *chat_websocket_urlpatterns,
]
