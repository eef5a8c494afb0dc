from django.apps import AppConfig


class SystemConfig(AppConfig):
    name = "slm_project.system"
    label = "system"
    verbose_name = "System"
