from django.apps import AppConfig


class SecurityConfig(AppConfig):
    name = "slm_project.security"
    label = "security"
    verbose_name = "Security"

    def ready(self) -> None:
        from slm_project.security import checks  # noqa: F401 - registers the master key check
