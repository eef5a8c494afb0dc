import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """An operator of the SLM (a person using the ops portal or the API with a session).

    Defined from the first migration so that the user model can grow (teams, SSO ids) without the
    painful mid-project swap of ``AUTH_USER_MODEL``; UUID keys do not leak how many operators exist.
    Machines authenticate with their own credential kinds (node agent tokens, API clients), never as users.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)

    class Meta(AbstractUser.Meta):
        ordering = ["username"]

    def __str__(self) -> str:
        return self.username
