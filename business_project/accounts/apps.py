from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "business_project.accounts"
    label = "accounts"
    verbose_name = "Users"
