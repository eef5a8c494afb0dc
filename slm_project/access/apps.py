from django.apps import AppConfig


class AccessConfig(AppConfig):
    name = "slm_project.access"
    label = "access"
