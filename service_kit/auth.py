"""Credentials in requests, the same for both projects."""

from __future__ import annotations

from rest_framework import authentication


def bearer_token(request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when there is none."""
    header = authentication.get_authorization_header(request).decode("latin-1")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
