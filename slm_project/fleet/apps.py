from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "slm_project.fleet"
    label = "fleet"
    verbose_name = "Fleet"

    def ready(self) -> None:
        from slm_project.fleet import signals  # noqa: F401 - connects the receivers
