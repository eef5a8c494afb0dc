"""Included at ``/api/``."""

from django.urls import path

from business_project.chat.api import views

app_name = "chat-api"

CONVERSATION = "conversations/<uuid:conversation_id>/"
MESSAGE = CONVERSATION + "messages/<uuid:message_id>/"

urlpatterns = [
    path("conversations/", views.ConversationListView.as_view(), name="conversation-list"),
    path(CONVERSATION, views.ConversationDetailView.as_view(), name="conversation-detail"),
    path(
        CONVERSATION + "export.json",
        views.ConversationJsonExportView.as_view(),
        name="export-json",
    ),
    path(
        CONVERSATION + "export.md",
        views.ConversationMarkdownExportView.as_view(),
        name="export-markdown",
    ),
    path(CONVERSATION + "messages/", views.MessageListView.as_view(), name="message-list"),
    path(MESSAGE, views.MessageDetailView.as_view(), name="message-detail"),
    path(MESSAGE + "stop/", views.MessageStopView.as_view(), name="message-stop"),
    path(MESSAGE + "regenerate/", views.MessageRegenerateView.as_view(), name="message-regenerate"),
    path(MESSAGE + "events/", views.MessageEventsView.as_view(), name="message-events"),
    path("chat/quota/", views.QuotaView.as_view(), name="quota"),
]
