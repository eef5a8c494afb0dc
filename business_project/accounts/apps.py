from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "business_project.accounts"
    label = "accounts"
    verbose_name = "Users"

    def ready(self) -> None:
        from business_project.accounts import schema  # noqa: F401 - registers the OpenAPI security scheme
