"""DRF authentication and permissions for API clients (service accounts) and scopes.

Operators use the API with their admin session (staff users hold every scope); machines use a bearer
token of an ``ApiClient`` and get exactly its scopes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from service_kit.auth import bearer_token
from slm_project.access.models import ApiClient
from slm_project.access.services import TOKEN_PREFIX
from slm_project.access.tokens import token_matches

# last_used_at is a hint for operators, not an audit trail: write it at most once a minute.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class ApiClientPrincipal:
    """``request.user`` for a request made with an API client token."""

    client_id: str
    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    is_authenticated: bool = True
    is_staff: bool = False
    is_active: bool = True

    def __str__(self) -> str:
        return f"api-client:{self.name}"


class ApiClientAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        token = bearer_token(request)
        if token is None or not token.startswith(TOKEN_PREFIX):
            return None
        lookup_id = token[len(TOKEN_PREFIX) :].partition("_")[0]
        client = ApiClient.objects.filter(lookup_id=lookup_id).first()
        now = timezone.now()
        if client is None or not token_matches(token, client.token_hash):
            raise exceptions.AuthenticationFailed("Invalid API token.")
        if client.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API token was revoked.")
        if client.expires_at is not None and client.expires_at <= now:
            raise exceptions.AuthenticationFailed("This API token has expired.")
        if client.last_used_at is None or now - client.last_used_at > LAST_USED_RESOLUTION:
            ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)
        principal = ApiClientPrincipal(str(client.pk), client.name, frozenset(client.scopes))
        return principal, client

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="slm"'


class HasScope(permissions.BasePermission):
    """Views declare ``required_scopes = {"GET": "nodes:read", "POST": "nodes:write", …}``.

    Staff operators (session) pass; API clients need the scope of the method; everyone else is refused.
    """

    message = "This token lacks the scope this request needs."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if user is None or not getattr(user, "is_authenticated", False):
            return False
        if isinstance(user, ApiClientPrincipal):
            required = getattr(view, "required_scopes", {}).get(request.method)
            if request.method in ("HEAD", "OPTIONS"):
                required = getattr(view, "required_scopes", {}).get("GET")
            return required is not None and required in user.scopes
        return bool(user.is_active and user.is_staff)


def actor_of(request) -> str:
    """Who did it, for audit records: ``user:<name>`` or ``api-client:<name>``."""
    user = request.user
    if isinstance(user, ApiClientPrincipal):
        return str(user)
    return f"user:{user.get_username()}"
