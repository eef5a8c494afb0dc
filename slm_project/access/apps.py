from django.apps import AppConfig


class AccessConfig(AppConfig):
    name = "slm_project.access"
    label = "access"
    verbose_name = "API access"

    def ready(self) -> None:
        from slm_project.access import schema  # noqa: F401 - registers the OpenAPI security scheme
