"""Quotas on LLM calls, checked before a provider is called.

Limits come from the user's role (``CHAT_QUOTAS``) unless the user has their own (``UserQuota``):
requests per minute (calls admitted in the last 60 seconds, in flight or done) and tokens per UTC day
(prompt plus completion tokens of the calls started since midnight UTC). Both are counted from the usage
ledger, so every web process enforces the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import Count, F, Min, Q, Sum
from rest_framework import status

from business_project.chat.models import UsageRecord, UserQuota
from service_kit.errors import ServiceError

WINDOW = timedelta(minutes=1)


@dataclass(frozen=True)
class QuotaLimits:
    requests_per_minute: int | None  # None: unlimited
    tokens_per_day: int | None


@dataclass(frozen=True)
class QuotaStatus:
    limits: QuotaLimits
    requests_last_minute: int
    tokens_today: int
    requests_reset_at: datetime | None
    tokens_reset_at: datetime


class QuotaExceeded(ServiceError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "quota_exceeded"
    default_detail = "You have used your quota."

    def __init__(self, message: str, *, reset_at: datetime) -> None:
        super().__init__(message)
        self.reset_at = reset_at
        # DRF turns ``wait`` into the Retry-After header.
        self.wait = max(1, math.ceil((reset_at - datetime.now(UTC)).total_seconds()))


def quota_limits_of(*, user, own: UserQuota | bool | None = False) -> QuotaLimits:
    """The user's limits. ``own``: their ``UserQuota`` when the caller has read it already (``None``:
    they have none); by default it is read here."""
    role_limits = settings.CHAT_QUOTAS.get(user.effective_role, {})
    limits = QuotaLimits(role_limits.get("requests_per_minute"), role_limits.get("tokens_per_day"))
    if own is False:
        own = UserQuota.objects.filter(user=user).first()
    if own is not None:
        limits = QuotaLimits(
            own.requests_per_minute if own.requests_per_minute is not None else limits.requests_per_minute,
            own.tokens_per_day if own.tokens_per_day is not None else limits.tokens_per_day,
        )
    return limits


def _day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def quota_status(*, user, now: datetime | None = None, own: UserQuota | bool | None = False) -> QuotaStatus:
    """The user's usage against their limits, counted in one query over the ledger (the rows since the
    earlier of a minute ago and midnight UTC). ``own`` as for ``quota_limits_of``."""
    now = now or datetime.now(UTC)
    window = usage_window(now)
    last_minute = Q(created_at__gt=window.minute_ago)
    usage = UsageRecord.objects.filter(user=user, created_at__gte=window.since).aggregate(
        count=Count("id", filter=last_minute),
        oldest=Min("created_at", filter=last_minute),
        tokens=Sum(F("prompt_tokens") + F("completion_tokens"), filter=Q(created_at__gte=window.day_start)),
    )
    return window.status(
        limits=quota_limits_of(user=user, own=own),
        count=usage["count"],
        oldest=usage["oldest"],
        tokens=usage["tokens"],
    )


@dataclass(frozen=True)
class UsageWindow:
    """The ledger rows a quota decision counts, as of ``now``: calls after ``minute_ago`` and tokens
    since ``day_start``; ``since`` is the earlier of the two (the rows to read at all)."""

    now: datetime
    minute_ago: datetime
    day_start: datetime

    @property
    def since(self) -> datetime:
        return min(self.minute_ago, self.day_start)

    def status(self, *, limits: QuotaLimits, count, oldest, tokens) -> QuotaStatus:
        """The status from the counts over this window (``None`` counts: no rows)."""
        return QuotaStatus(
            limits=limits,
            requests_last_minute=count or 0,
            tokens_today=tokens or 0,
            requests_reset_at=oldest + WINDOW if oldest else None,
            tokens_reset_at=self.day_start + timedelta(days=1),
        )


def usage_window(now: datetime) -> UsageWindow:
    return UsageWindow(now=now, minute_ago=now - WINDOW, day_start=_day_start(now))


def quota_admit(*, user, now: datetime | None = None, own: UserQuota | bool | None = False) -> None:
    """Raise ``QuotaExceeded`` (with the time the limit resets) when one more call is over a limit."""
    now = now or datetime.now(UTC)
    quota_check(quota_status(user=user, now=now, own=own), now=now)


def quota_check(state: QuotaStatus, *, now: datetime) -> None:
    """Raise ``QuotaExceeded`` when ``state`` leaves no room for one more call."""
    rpm, per_day = state.limits.requests_per_minute, state.limits.tokens_per_day
    if per_day is not None and state.tokens_today >= per_day:
        reset = state.tokens_reset_at
        raise QuotaExceeded(
            f"You have used your {per_day} tokens for today; the quota resets at {_iso(reset)}.",
            reset_at=reset,
        )
    if rpm is not None and state.requests_last_minute >= rpm:
        reset = state.requests_reset_at or now + WINDOW
        raise QuotaExceeded(
            f"You may send {rpm} messages a minute; try again at {_iso(reset)}.", reset_at=reset
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
