"""Enums of the LLM provider registry."""

from django.db import models


class ProviderKind(models.TextChoices):
    """The wire protocol a provider speaks."""

    OLLAMA = "ollama", "Ollama (/api/chat, NDJSON)"
    OPENAI = "openai", "OpenAI-compatible (/v1/chat/completions, SSE)"


class ProviderStatus(models.TextChoices):
    """What the picker and the admin show for a provider, from its breaker and its last probe."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"  # the last probe or request failed, the breaker is still closed
    UNAVAILABLE = "unavailable"  # the breaker is open
    DISABLED = "disabled"
    UNKNOWN = "unknown"  # never probed
