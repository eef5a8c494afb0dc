import uuid

from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.db import models
from django.db.models import Q

from business_project.accounts.choices import Role


class UserManager(DjangoUserManager):
    def create_superuser(self, username, email=None, password=None, **extra_fields):
        # `createsuperuser` makes admins; their stored role says so too, not only is_superuser.
        extra_fields.setdefault("role", Role.ADMIN)
        return super().create_superuser(username, email, password, **extra_fields)


class User(AbstractUser):
    """A user of AutoBot's chat, knowledge base and workflows.

    Defined from the first migration so that roles, tokens and quotas can be added without swapping
    ``AUTH_USER_MODEL`` mid-project; UUID keys do not leak how many users exist. ``role`` decides what the
    user may do (``accounts.constants.ROLE_SCOPES``) and which quota applies; a superuser is an admin
    whatever ``role`` holds (see ``effective_role``).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)

    objects = UserManager()

    class Meta(AbstractUser.Meta):
        ordering = ["username"]
        constraints = [
            models.CheckConstraint(condition=Q(role__in=Role.values), name="accounts_user_role_valid"),
        ]

    def __str__(self) -> str:
        return self.username

    @property
    def effective_role(self) -> str:
        return Role.ADMIN if self.is_superuser else self.role


class ApiToken(models.Model):
    """A personal API token: a bearer credential for REST and websocket clients acting as its user.

    The token is shown once at creation and stored only as a SHA-256 hash; ``lookup_id`` (a public part
    of the token) finds the row without comparing hashes. It carries scopes (``choices.Scope``), may
    expire, and is revoked rather than deleted so that its history stays visible.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    lookup_id = models.CharField(max_length=32, unique=True)
    token_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Names tell a user's live tokens apart; a revoked token frees its name.
            models.UniqueConstraint(
                fields=["user", "name"],
                condition=Q(revoked_at__isnull=True),
                name="accounts_apitoken_live_name_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} / {self.name}"
