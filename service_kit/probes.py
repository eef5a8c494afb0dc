"""Liveness and readiness.

``/healthz`` says the process serves requests and touches nothing else, so an orchestrator never
restarts a healthy web process because a dependency is down. ``/readyz`` checks each dependency the
process cannot serve without (database, broker, cache) and answers 503 naming the failing ones; extra
*information* (for the business app: can it reach the SLM) is reported but never decides readiness.
Error details are exception class names only: a driver's message can contain a URL with a password.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.cache import caches
from django.db import connections
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

BROKER_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    latency_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"ok": self.ok, "latency_ms": round(self.latency_ms, 1)}
        if self.error:
            result["error"] = self.error
        return result


Check = Callable[[], None]


def run_check(check: Check) -> CheckResult:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # a probe reports every failure; it must never raise
        return CheckResult(False, (time.perf_counter() - started) * 1000, exc.__class__.__name__)
    return CheckResult(True, (time.perf_counter() - started) * 1000)


def database_check(alias: str = "default") -> Check:
    def check() -> None:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            if cursor.fetchone() != (1,):
                raise RuntimeError("unexpected answer")

    return check


def cache_check(alias: str = "default") -> Check:
    def check() -> None:
        cache = caches[alias]
        key, value = f"readyz:{uuid.uuid4().hex}", uuid.uuid4().hex
        cache.set(key, value, timeout=10)
        try:
            if cache.get(key) != value:
                raise RuntimeError("cache did not return what was written")
        finally:
            cache.delete(key)

    return check


def broker_check(celery_app) -> Check:
    def check() -> None:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)

    return check


def healthz_view():
    @never_cache
    @require_GET
    def healthz(request):
        return JsonResponse({"status": "ok"})

    return healthz


def readyz_view(checks: Mapping[str, Check], info: Mapping[str, Callable[[], dict[str, Any]]] | None = None):
    """A view running ``checks`` (which decide the status) and ``info`` providers (which do not)."""

    @never_cache
    @require_GET
    def readyz(request):
        results = {name: run_check(check) for name, check in checks.items()}
        ready = all(result.ok for result in results.values())
        body: dict[str, Any] = {
            "status": "ready" if ready else "not_ready",
            "checks": {name: result.as_dict() for name, result in results.items()},
        }
        if info:
            body["info"] = {name: provide() for name, provide in info.items()}
        return JsonResponse(body, status=200 if ready else 503)

    return readyz
