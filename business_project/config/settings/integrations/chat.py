"""Chat: message limits, the event buffer, heartbeats and quotas.

Quotas are per role, overridable per user (``chat.UserQuota`` in the admin). ``CHAT_QUOTA_<ROLE>_RPM``
is LLM calls per minute, ``CHAT_QUOTA_<ROLE>_TOKENS_PER_DAY`` prompt plus completion tokens per UTC day;
``unlimited`` (or empty) lifts a limit, ``0`` forbids.
"""

from django.core.exceptions import ImproperlyConfigured

from business_project.config.env import env


def _limit(name: str, default: str) -> int | None:
    value = env.str(name, default=default).strip().lower()
    if value in ("", "unlimited", "none"):
        return None
    if not value.isdigit():
        raise ImproperlyConfigured(f"{env.names_for(name)} must be a whole number or 'unlimited'")
    return int(value)


CHAT_QUOTAS = {
    role: {
        "requests_per_minute": _limit(f"CHAT_QUOTA_{role.upper()}_RPM", rpm),
        "tokens_per_day": _limit(f"CHAT_QUOTA_{role.upper()}_TOKENS_PER_DAY", tokens),
    }
    for role, rpm, tokens in (
        ("admin", "120", "unlimited"),
        ("member", "20", "500000"),
        ("viewer", "0", "0"),
    )
}

# Longest user message accepted, in characters.
CHAT_MESSAGE_MAX_CHARS = env.int("CHAT_MESSAGE_MAX_CHARS", default=32_000)
# How many earlier messages of a conversation are sent to the model with a new one.
CHAT_CONTEXT_MAX_MESSAGES = env.int("CHAT_CONTEXT_MAX_MESSAGES", default=40)
CHAT_SYSTEM_PROMPT = env.str("CHAT_SYSTEM_PROMPT", default="")

# Events of a message are kept this long after its last event, for clients that reconnect and resume.
# Redis (REDIS_URL, the channel layer's server) when configured; in-process memory only without one.
CHAT_EVENT_BUFFER_TTL = env.int("CHAT_EVENT_BUFFER_TTL", default=3600)
CHAT_EVENT_BUFFER_REDIS_URL = env.str("CHAT_EVENT_BUFFER_REDIS_URL", default="")
# A streaming answer is saved at most this often (seconds) before its final write.
CHAT_CHECKPOINT_INTERVAL = env.float("CHAT_CHECKPOINT_INTERVAL", default=2.0)
CHAT_HEARTBEAT_INTERVAL = env.float("CHAT_HEARTBEAT_INTERVAL", default=15.0)
# On PostgreSQL, admissions, checkpoints and final writes of the websocket run on asynchronous connections
# of the event loop (chat/hotpath.py says why); false runs them through the ORM in threads, as on SQLite.
CHAT_HOT_PATH_ASYNC = env.bool("CHAT_HOT_PATH_ASYNC", default=True)
# A message still "streaming" with no write for this long lost its generator (a killed process).
CHAT_STALE_STREAM_AFTER = env.int("CHAT_STALE_STREAM_AFTER", default=600)
# The interpreter's switch interval in the ASGI process (config/asgi.py says why it is shorter than
# Python's 5 ms).
ASGI_SWITCH_INTERVAL_SECONDS = env.float("ASGI_SWITCH_INTERVAL_SECONDS", default=0.0005)
