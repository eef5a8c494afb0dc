from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "slm_project.deployments"
    label = "deployments"
    verbose_name = "Deployments"

    def ready(self) -> None:
        # The node lifecycle's runs (enroll.yml, decommission.yml) are deployments; the fleet app, below
        # this one, reaches them through this registration (see fleet/lifecycle.py).
        from slm_project.deployments.actions import NodeLifecycleRuns
        from slm_project.fleet import lifecycle

        lifecycle.register(NodeLifecycleRuns())
