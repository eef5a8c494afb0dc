"""Test data for the chat and accounts: users with a role, sessions and tokens, made through the real
models and services."""

from __future__ import annotations

import itertools

from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from business_project.accounts.services import api_token_create

PASSWORD = "a-long-enough-test-password"
_names = itertools.count(1)


def make_user(username: str | None = None, *, role: str = "member", **fields):
    username = username or f"user{next(_names)}"
    return get_user_model().objects.create_user(username=username, password=PASSWORD, role=role, **fields)


def session_cookie(user) -> str:
    """A ``Cookie`` header value for a signed-in session of ``user`` (stored in the test database)."""
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


def make_token(user, *scopes: str, name: str | None = None, **fields) -> str:
    _, token = api_token_create(
        user=user,
        name=name or f"token-{next(_names)}",
        scopes=scopes or ("chat:read", "chat:write"),
        **fields,
    )
    return token
