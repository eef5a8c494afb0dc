import uuid

from django.db import models


class ApiClient(models.Model):
    """A service account of the SLM API (the business app is one): a hashed bearer token, scopes and an
    optional expiry. The token is shown once at creation; ``lookup_id`` finds the row without scanning
    hashes. Node agents authenticate with their own per-node tokens, never as API clients."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    lookup_id = models.CharField(max_length=16, unique=True)
    token_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
