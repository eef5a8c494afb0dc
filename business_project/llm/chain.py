"""The provider chain as streams use it: an in-memory snapshot of the enabled providers, their models,
decrypted keys and resolved base URLs, rebuilt at most every ``LLM_PROVIDER_CACHE_SECONDS``.

A chat request therefore costs no database query and no SLM call; the price is that a change made in
another process shows after at most that many seconds (changes made in this process, and breaker
updates, drop the snapshot at once). Decrypted keys live only in this process's memory, in fields that
``repr`` never shows.

Loading is synchronous (ORM, vault, the SLM gateway); async callers run it in a thread.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Prefetch

from business_project.integrations.slm import gateway
from business_project.llm import vault
from business_project.llm.clients import scrub
from business_project.llm.models import Provider, ProviderModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    context_window: int | None
    params: dict[str, Any]
    is_default: bool


@dataclass(frozen=True)
class ProviderConfig:
    """One provider as a stream needs it. ``base_url`` is empty when it could not be resolved, and
    ``unusable`` then says why (discovery failed, the key does not open)."""

    id: uuid.UUID
    name: str
    kind: str
    is_default: bool
    priority: int
    base_url: str
    discover: bool
    params: dict[str, Any]
    connect_timeout: float
    first_token_timeout: float
    read_timeout: float
    models: tuple[ModelConfig, ...]
    consecutive_failures: int
    breaker_opened_until: datetime | None
    unusable: str = ""
    api_key: str | None = field(default=None, repr=False)

    def breaker_open(self, now: datetime) -> bool:
        return self.breaker_opened_until is not None and self.breaker_opened_until > now

    def model(self, name: str) -> ModelConfig | None:
        for model in self.models:
            if model.name == name:
                return model
        return None

    @property
    def default_model(self) -> ModelConfig | None:
        for model in self.models:
            if model.is_default:
                return model
        return self.models[0] if self.models else None


def discovered_llm_url() -> tuple[str, str]:
    """``(url, "")`` of the LLM endpoint the SLM knows (healthy ones first), or ``("", reason)``."""
    try:
        result = gateway.discover(gateway.LLM)
    except gateway.SlmGatewayError as exc:
        return "", f"the SLM did not say where the LLM runs ({exc.code})"
    endpoints = result.healthy or result.endpoints
    if not endpoints:
        return "", "the SLM knows no LLM endpoint"
    return endpoints[0].url, ""


def _api_key(provider: Provider) -> tuple[str | None, str]:
    sealed = provider.sealed_api_key
    if sealed is None:
        return None, ""
    try:
        return vault.open_sealed(sealed, context=provider.api_key_context).decode(), ""
    except vault.VaultError as exc:
        # The message names ids and variables only (the vault's rule).
        logger.error("llm provider key does not open provider=%s code=%s", provider.name, exc.default_code)
        return None, f"its API key does not open ({exc.default_code})"


def provider_config(provider: Provider, *, discovered: tuple[str, str] | None = None) -> ProviderConfig:
    """The config of one provider row (its models prefetched or not); ``discovered`` reuses a lookup."""
    api_key, key_problem = _api_key(provider)
    if provider.discover:
        base_url, url_problem = discovered if discovered is not None else discovered_llm_url()
    else:
        base_url, url_problem = provider.base_url, ""
    models = tuple(
        ModelConfig(
            name=model.name,
            context_window=model.context_window,
            params=dict(model.default_params or {}),
            is_default=model.is_default,
        )
        for model in provider.models.all()
        if model.enabled
    )
    return ProviderConfig(
        id=provider.id,
        name=provider.name,
        kind=provider.kind,
        is_default=provider.is_default,
        priority=provider.priority,
        base_url=base_url,
        discover=provider.discover,
        params=dict(provider.default_params or {}),
        connect_timeout=provider.connect_timeout,
        first_token_timeout=provider.first_token_timeout,
        read_timeout=provider.read_timeout,
        models=models,
        consecutive_failures=provider.consecutive_failures,
        breaker_opened_until=provider.breaker_opened_until,
        unusable=scrub(key_problem or url_problem),
        api_key=api_key,
    )


def build_chain() -> tuple[ProviderConfig, ...]:
    """Every enabled provider, in chain order (the default first, then by priority and name)."""
    models = Prefetch("models", queryset=ProviderModel.objects.order_by("-is_default", "name"))
    providers = list(Provider.objects.filter(enabled=True).prefetch_related(models))
    discovered = discovered_llm_url() if any(provider.discover for provider in providers) else None
    return tuple(provider_config(provider, discovered=discovered) for provider in providers)


# --------------------------------------------------------------------------------------------------
# The per-process snapshot

_lock = threading.Lock()
_snapshot: tuple[float, tuple[ProviderConfig, ...]] | None = None


def fresh_chain() -> tuple[ProviderConfig, ...] | None:
    """The snapshot while it is fresh, else None; never blocks (async callers skip the thread hop)."""
    snapshot = _snapshot
    if snapshot is not None and snapshot[0] > time.monotonic():
        return snapshot[1]
    return None


def load_chain() -> tuple[ProviderConfig, ...]:
    """The chain, from the snapshot while it is fresh."""
    global _snapshot  # the per-process snapshot, guarded by the lock
    snapshot = _snapshot
    if snapshot is not None and snapshot[0] > time.monotonic():
        return snapshot[1]
    with _lock:
        snapshot = _snapshot
        if snapshot is not None and snapshot[0] > time.monotonic():
            return snapshot[1]
        chain = build_chain()
        _snapshot = (time.monotonic() + settings.LLM_PROVIDER_CACHE_SECONDS, chain)
        return chain


def invalidate_chain() -> None:
    """Drop the snapshot: the next stream reads the providers again."""
    global _snapshot
    with _lock:
        _snapshot = None
