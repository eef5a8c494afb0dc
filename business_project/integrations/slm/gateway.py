"""The business layer's only door to the SLM.

It builds one ``SlmClient`` per process from settings and wraps each call the business app needs in a
typed function that never lets an SLM outage break the business app: the last good answer is kept in
the shared cache and reported, marked as such, when the SLM is down. Infrastructure questions go
through here and nowhere else (import-linter enforces it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from shared_contracts.client import SlmClient
from shared_contracts.errors import ContractError
from shared_contracts.schemas.common import MetaInfo

logger = logging.getLogger(__name__)

_LAST_KNOWN_TTL = 7 * 24 * 3600  # stale answers outlive an SLM outage of a week
# A readiness probe must answer within an orchestrator's probe timeout (often 1 s): its SLM check makes
# one attempt with short timeouts instead of the regular client's retries with backoff.
PROBE_CONNECT_TIMEOUT = 0.5
PROBE_READ_TIMEOUT = 1.0

_clients_lock = threading.Lock()
_clients: dict[str, SlmClient] = {}


def _cached_client(purpose: str, **options) -> SlmClient:
    with _clients_lock:
        client = _clients.get(purpose)
        if client is None or client.base_url != settings.SLM_API_URL.rstrip("/"):
            client = SlmClient(settings.SLM_API_URL, settings.SLM_API_TOKEN or None, **options)
            _clients[purpose] = client
        return client


def get_client() -> SlmClient:
    """The process's client; built once so that connections to the SLM are pooled."""
    return _cached_client(
        "regular",
        connect_timeout=settings.SLM_CONNECT_TIMEOUT,
        read_timeout=settings.SLM_READ_TIMEOUT,
    )


def _probe_client() -> SlmClient:
    return _cached_client(
        "probe",
        connect_timeout=min(PROBE_CONNECT_TIMEOUT, settings.SLM_CONNECT_TIMEOUT),
        read_timeout=min(PROBE_READ_TIMEOUT, settings.SLM_READ_TIMEOUT),
        retries=0,
    )


@dataclass(frozen=True)
class SlmStatus:
    """Whether the SLM answered just now, and what it last said about itself."""

    reachable: bool
    url: str
    latency_ms: float | None = None
    slm_version: str | None = None
    contract_version: str | None = None
    error: str | None = None
    last_seen: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def slm_status() -> SlmStatus:
    """Ask the SLM now (``GET /api/v1/meta``), never from cache: readiness reports must be current.

    Never raises: an unreachable or incompatible SLM is a status, not an error, for the business app.
    """
    url = settings.SLM_API_URL
    started = time.perf_counter()
    try:
        meta = _probe_client().meta()
    except ContractError as exc:
        last: dict[str, Any] | None = cache.get(_cache_key("meta:last"))
        return SlmStatus(
            reachable=False,
            url=url,
            error=exc.code,
            slm_version=last["version"] if last else None,
            contract_version=last["contract_version"] if last else None,
            last_seen=last["seen_at"] if last else None,
        )
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    seen_at = timezone.now().isoformat()
    _remember_meta(meta, seen_at)
    return SlmStatus(
        reachable=True,
        url=url,
        latency_ms=latency_ms,
        slm_version=meta.version,
        contract_version=meta.contract_version,
        last_seen=seen_at,
    )


def _remember_meta(meta: MetaInfo, seen_at: str) -> None:
    value = {
        "version": meta.version,
        "contract_version": meta.contract_version,
        "seen_at": seen_at,
    }
    cache.set(_cache_key("meta:last"), value, timeout=_LAST_KNOWN_TTL)


def _cache_key(name: str) -> str:
    return f"slm-gateway:{name}"
