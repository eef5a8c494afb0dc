"""Writes of accounts: roles, personal API tokens and their use, and login throttling."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from rest_framework import status

from business_project.accounts.choices import Role, Scope
from business_project.accounts.models import ApiToken, User
from business_project.accounts.tokens import token_hash, token_lookup_id, token_matches, token_new
from service_kit.errors import Conflict, ServiceError

# last_used_at is a hint for people, not an audit trail: written at most once a minute.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenRejected(ServiceError):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_code = "authentication_failed"
    default_detail = "Invalid API token."


# --------------------------------------------------------------------------------------------------
# Roles


def user_role_set(*, user: User, role: str) -> User:
    if role not in Role.values:
        raise ServiceError(f"Unknown role {role!r}; known: {', '.join(Role.values)}.")
    user.role = role
    user.save(update_fields=["role"])
    return user


# --------------------------------------------------------------------------------------------------
# Personal API tokens


@transaction.atomic
def api_token_create(
    *, user: User, name: str, scopes: Iterable[str], expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Create a token and return it with its secret, which exists nowhere else afterwards."""
    name = name.strip()
    scopes = sorted(set(scopes))
    unknown = [scope for scope in scopes if scope not in Scope.values]
    if unknown:
        raise ServiceError(f"Unknown scopes: {', '.join(unknown)}; known: {', '.join(Scope.values)}.")
    if not scopes:
        raise ServiceError("A token needs at least one scope.")
    if not name:
        raise ServiceError("A token needs a name.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ServiceError("The expiry must be in the future.")
    if ApiToken.objects.filter(user=user, name=name, revoked_at__isnull=True).exists():
        raise Conflict(f"You have a live token named {name!r} already.")
    token, lookup_id = token_new()
    row = ApiToken.objects.create(
        user=user,
        name=name,
        lookup_id=lookup_id,
        token_hash=token_hash(token),
        scopes=scopes,
        expires_at=expires_at,
    )
    return row, token


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def api_token_authenticate(*, raw_token: str) -> tuple[User, ApiToken]:
    """The user and token a bearer token stands for; ``TokenRejected`` when it is not a live token.

    The message says why (unknown, revoked, expired, inactive user) but never repeats the token.
    """
    lookup_id = token_lookup_id(raw_token)
    row = None
    if lookup_id is not None:
        row = ApiToken.objects.select_related("user").filter(lookup_id=lookup_id).first()
    if row is None or not token_matches(raw_token, row.token_hash):
        raise TokenRejected()
    now = timezone.now()
    if row.revoked_at is not None:
        raise TokenRejected("This API token was revoked.")
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenRejected("This API token has expired.")
    if not row.user.is_active:
        raise TokenRejected("The owner of this API token is inactive.")
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user, row


# --------------------------------------------------------------------------------------------------
# Login throttling
#
# Failed sign-ins are counted per (username, client address) in the cache (Redis in production, so all
# web processes share the count). After LOGIN_FAILURE_LIMIT failures within LOGIN_FAILURE_WINDOW seconds
# the pair is locked for LOGIN_LOCKOUT seconds: further attempts are refused before the password is even
# checked, so a correct guess during the lockout teaches the attacker nothing.


@dataclass(frozen=True)
class LoginLocked(Exception):
    retry_after: int

    def message(self) -> str:
        minutes = max(1, math.ceil(self.retry_after / 60))
        unit = "minute" if minutes == 1 else "minutes"
        return f"Too many failed sign-in attempts. Try again in {minutes} {unit}."


def _login_keys(username: str, address: str) -> tuple[str, str]:
    # Hashed: usernames and addresses are personal data and need not sit in the cache in clear.
    digest = hashlib.sha256(f"{username.strip().lower()}\x00{address}".encode()).hexdigest()[:32]
    return f"login-failures:{digest}", f"login-locked:{digest}"


def login_throttle_check(*, username: str, address: str) -> None:
    """Raise ``LoginLocked`` when this username from this address is locked out."""
    _, locked_key = _login_keys(username, address)
    locked_until = cache.get(locked_key)
    if locked_until is not None:
        remaining = math.ceil(locked_until - time.time())
        if remaining > 0:
            raise LoginLocked(retry_after=remaining)


def login_failure_record(*, username: str, address: str) -> None:
    failures_key, locked_key = _login_keys(username, address)
    cache.add(failures_key, 0, timeout=settings.LOGIN_FAILURE_WINDOW)
    try:
        failures = cache.incr(failures_key)
    except ValueError:  # expired between add and incr
        cache.set(failures_key, 1, timeout=settings.LOGIN_FAILURE_WINDOW)
        failures = 1
    if failures >= settings.LOGIN_FAILURE_LIMIT:
        cache.set(locked_key, time.time() + settings.LOGIN_LOCKOUT, timeout=settings.LOGIN_LOCKOUT)
        cache.delete(failures_key)


def login_success_record(*, username: str, address: str) -> None:
    failures_key, _ = _login_keys(username, address)
    cache.delete(failures_key)
