"""Bearer tokens: high-entropy random strings, stored only as SHA-256 hashes.

A slow password hash is not needed (256 random bits cannot be guessed) and would cost every API call
and websocket connect; comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from business_project.accounts.constants import API_TOKEN_LOOKUP_BYTES, API_TOKEN_PREFIX


def token_new() -> tuple[str, str]:
    """A new token and its lookup id: ``abt_<lookup id>_<secret>``."""
    lookup_id = secrets.token_hex(API_TOKEN_LOOKUP_BYTES)
    return f"{API_TOKEN_PREFIX}{lookup_id}_{secrets.token_urlsafe(32)}", lookup_id


def token_lookup_id(token: str) -> str | None:
    """The lookup id of something shaped like one of our tokens, else None."""
    if not token.startswith(API_TOKEN_PREFIX):
        return None
    lookup_id, separator, secret = token[len(API_TOKEN_PREFIX) :].partition("_")
    if not separator or not lookup_id or not secret:
        return None
    return lookup_id


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return bool(stored_hash) and hmac.compare_digest(token_hash(token), stored_hash)
