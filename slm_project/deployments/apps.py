from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "slm_project.deployments"
    label = "deployments"
    verbose_name = "Deployments"
