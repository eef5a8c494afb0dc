from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from service_kit.errors import Conflict, ServiceError
from slm_project.access.choices import Scope
from slm_project.access.models import ApiClient
from slm_project.access.tokens import token_hash

TOKEN_PREFIX = "slm_"  # noqa: S105 - a public marker of the token kind, not a secret


@transaction.atomic
def api_client_create(
    *, name: str, scopes: Iterable[str], expires_at: datetime | None = None
) -> tuple[ApiClient, str]:
    """Create a client and return it with its token, which exists nowhere else afterwards."""
    scopes = sorted(set(scopes))
    unknown = [scope for scope in scopes if scope not in Scope.values]
    if unknown:
        raise ServiceError(f"Unknown scopes: {', '.join(unknown)}; known: {', '.join(Scope.values)}.")
    if not scopes:
        raise ServiceError("An API client needs at least one scope.")
    if ApiClient.objects.filter(name=name).exists():
        raise Conflict(f"An API client named {name!r} exists already.")
    lookup_id = secrets.token_hex(8)
    token = f"{TOKEN_PREFIX}{lookup_id}_{secrets.token_urlsafe(32)}"
    client = ApiClient.objects.create(
        name=name, lookup_id=lookup_id, token_hash=token_hash(token), scopes=scopes, expires_at=expires_at
    )
    return client, token


def api_client_revoke(*, client: ApiClient) -> ApiClient:
    client.revoked_at = timezone.now()
    client.save(update_fields=["revoked_at"])
    return client
