from django.db import models


class CredentialKind(models.TextChoices):
    SSH_PRIVATE_KEY = "ssh_private_key", "SSH private key"
    SSH_PASSWORD = "ssh_password", "SSH password"
    API_TOKEN = "api_token", "API token"
    GENERIC = "generic", "Generic secret"
