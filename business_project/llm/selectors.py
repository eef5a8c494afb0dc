"""Reads of the provider registry: the picker's list and the health history. Never a key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Prefetch, QuerySet
from django.utils import timezone

from business_project.llm.choices import ProviderStatus
from business_project.llm.models import Provider, ProviderHealthCheck, ProviderModel


@dataclass(frozen=True)
class AvailableModel:
    name: str
    display_name: str
    context_window: int | None
    is_default: bool


@dataclass(frozen=True)
class AvailableProvider:
    """A provider as the provider/model picker shows it: no URL, no key."""

    id: uuid.UUID
    name: str
    kind: str
    is_default: bool
    status: str
    last_checked_at: datetime | None
    models: tuple[AvailableModel, ...]


def provider_status(provider: Provider, *, now: datetime | None = None) -> str:
    """``ProviderStatus`` of a provider row from its breaker and its last probe."""
    now = now or timezone.now()
    if not provider.enabled:
        return ProviderStatus.DISABLED
    if provider.breaker_opened_until and provider.breaker_opened_until > now:
        return ProviderStatus.UNAVAILABLE
    if provider.consecutive_failures or provider.last_check_ok is False:
        return ProviderStatus.DEGRADED
    if provider.last_check_ok:
        return ProviderStatus.HEALTHY
    return ProviderStatus.UNKNOWN


def provider_list(*, enabled_only: bool = False) -> QuerySet[Provider]:
    """Providers in chain order (the default first, then by priority and name), models prefetched."""
    queryset = Provider.objects.prefetch_related(
        Prefetch("models", queryset=ProviderModel.objects.order_by("-is_default", "name"))
    )
    return queryset.filter(enabled=True) if enabled_only else queryset


def list_available_models() -> list[AvailableProvider]:
    """The enabled providers with their enabled models and status, in chain order (two queries)."""
    now = timezone.now()
    return [
        AvailableProvider(
            id=provider.id,
            name=provider.name,
            kind=provider.kind,
            is_default=provider.is_default,
            status=provider_status(provider, now=now),
            last_checked_at=provider.last_checked_at,
            models=tuple(
                AvailableModel(
                    name=model.name,
                    display_name=model.display_name or model.name,
                    context_window=model.context_window,
                    is_default=model.is_default,
                )
                for model in provider.models.all()
                if model.enabled
            ),
        )
        for provider in provider_list(enabled_only=True)
    ]


def provider_health_history(*, provider: Provider, limit: int = 100) -> QuerySet[ProviderHealthCheck]:
    """The latest health checks of ``provider``, newest first."""
    return ProviderHealthCheck.objects.filter(provider=provider).order_by("-checked_at", "-id")[:limit]


def provider_count_by_master_key() -> dict[str, int]:
    """How many provider API keys each master key id protects (ids in name order)."""
    rows = (
        Provider.objects.exclude(api_key_master_key_id="")
        .order_by("api_key_master_key_id")
        .values("api_key_master_key_id")
        .annotate(count=Count("id"))
    )
    return {row["api_key_master_key_id"]: row["count"] for row in rows}
