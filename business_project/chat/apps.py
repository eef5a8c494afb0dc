from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "business_project.chat"
    label = "chat"
    verbose_name = "Chat"
