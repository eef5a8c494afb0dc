from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "slm_project.accounts"
    label = "accounts"
    verbose_name = "Operators"
