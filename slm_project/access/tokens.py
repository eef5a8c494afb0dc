"""Bearer tokens: high-entropy random strings, stored only as SHA-256 hashes.

A slow password hash is not needed (nothing here is guessable: 256 bits of randomness) and would cost
every heartbeat and API call; comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def token_new(prefix: str) -> str:
    return f"{prefix}{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return bool(stored_hash) and hmac.compare_digest(token_hash(token), stored_hash)
