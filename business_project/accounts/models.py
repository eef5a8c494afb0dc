import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A user of AutoBot's chat, knowledge base and workflows.

    Defined from the first migration so that roles, tokens and quotas can be added without swapping
    ``AUTH_USER_MODEL`` mid-project; UUID keys do not leak how many users exist.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)

    class Meta(AbstractUser.Meta):
        ordering = ["username"]

    def __str__(self) -> str:
        return self.username
