from django.apps import AppConfig


class SystemConfig(AppConfig):
    name = "business_project.system"
    label = "system"
    verbose_name = "System"
