"""Reads of accounts: tokens and what a caller may do."""

from __future__ import annotations

from django.db.models import QuerySet

from business_project.accounts.constants import ROLE_SCOPES
from business_project.accounts.models import ApiToken, User


def api_token_list(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def api_token_get(*, user: User, token_id) -> ApiToken | None:
    return ApiToken.objects.filter(user=user, pk=token_id).first()


def scopes_of(*, user, token: ApiToken | None = None) -> frozenset[str]:
    """What a caller may do: its role's scopes, narrowed to the token's scopes for token callers."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return frozenset()
    role_scopes = ROLE_SCOPES.get(user.effective_role, frozenset())
    if token is None:
        return role_scopes
    return role_scopes & frozenset(token.scopes)
