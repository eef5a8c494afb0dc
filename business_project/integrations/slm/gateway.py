"""The business layer's only door to the SLM.

It builds one ``SlmClient`` per process from settings and wraps each call the business app needs in a
typed function that never lets an SLM outage break the business app: the last good answer is kept in
the shared cache and reported, marked as such, when the SLM is down. Infrastructure questions go
through here and nowhere else (import-linter enforces it).

- ``discover(service)`` and ``fleet_summary()`` answer from the Django cache for ``SLM_CACHE_TTL``
  seconds, then ask the SLM again. When the SLM is down (``SlmUnavailable``, ``ServerError``) they
  return the last known answer with ``stale=True``; with none known they raise ``SlmNeverAnswered``.
  An SLM that answers but refuses (token rejected, scope missing, contract mismatch) raises
  ``SlmRequestFailed``: that is a configuration error, not an outage, and stale data would hide it.
- ``slm_status()`` is for ``/readyz``: asked now, one fast attempt, never raises.
- ``request_deployment(...)`` asks the SLM for an infrastructure action (scope ``deployments:write``):
  never cached, never answered from a stale value; the business layer requests, the SLM deploys.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import quote

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from pydantic import ValidationError

from shared_contracts.client import SlmClient
from shared_contracts.errors import (
    AuthenticationFailed,
    ContractError,
    PermissionDenied,
    ServerError,
    SlmUnavailable,
)
from shared_contracts.schemas.common import MetaInfo
from shared_contracts.schemas.deployments import DeploymentDetail
from shared_contracts.schemas.fleet import FleetSummary, ServiceEndpoint

logger = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_PREFIX = "slm-gateway"
_LAST_KNOWN_TTL = 7 * 24 * 3600  # stale answers outlive an SLM outage of a week
# After a failed attempt the stale answer is served without asking the SLM again for this long (at
# most SLM_CACHE_TTL): otherwise every business request would pay the client's retries and timeouts
# for as long as the SLM is down.
OUTAGE_BACKOFF_SECONDS = 5
# A readiness probe must answer within an orchestrator's probe timeout (often 1 s): its SLM check makes
# one attempt with short timeouts instead of the regular client's retries with backoff.
PROBE_CONNECT_TIMEOUT = 0.5
PROBE_READ_TIMEOUT = 1.0

# ----------------------------------------------------------------------------------------------------
# Service names

# The names the business layer asks for, and what the SLM's role registry calls each service
# (``slm_project/fleet/registry.py``, ``discoverable``). A name not listed here is passed through as a
# registry name, so ``discover("ollama")`` works too and a service the SLM adds needs no change here.
SERVICE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "llm": "ollama",
        "redis": "redis-server",
        "ai-stack": "autobot-ai-stack",
        "npu-worker": "autobot-npu-worker",
        "browser-worker": "autobot-browser-worker",
    }
)
LLM = "llm"


def registry_name(service: str) -> str:
    """What the SLM calls ``service`` (``llm`` → ``ollama``)."""
    return SERVICE_NAMES.get(service, service)


# ----------------------------------------------------------------------------------------------------
# Errors


class SlmGatewayError(Exception):
    """Base of what the gateway raises; ``code`` is the contract error code behind it."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class SlmNeverAnswered(SlmGatewayError):
    """The SLM is down and has never answered this question, so there is no last known answer."""


class SlmRequestFailed(SlmGatewayError):
    """The SLM answered but refused or gave an unusable answer (token, scope, contract)."""


class SlmDeploymentRefused(SlmRequestFailed):
    """The SLM refused a deployment request. ``code``: ``permission_denied`` (the token lacks
    ``deployments:write``), ``validation_error`` (``fields`` names what: an unknown role or node, a
    variable outside the roles' allowlist), ``conflict`` (a node that takes no deployment) …"""

    def __init__(self, message: str, *, code: str, fields: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(message, code=code)
        self.fields = dict(fields or {})


class SlmDown(SlmGatewayError):
    """The SLM did not answer a request that no cached answer can stand in for (an action)."""


# ----------------------------------------------------------------------------------------------------
# Clients

_clients_lock = threading.Lock()
_clients: dict[str, tuple[tuple[str, str], SlmClient]] = {}


def _cached_client(purpose: str, **options) -> SlmClient:
    # Rebuilt when the URL or token in settings changes (tests change them; a process otherwise never).
    signature = (settings.SLM_API_URL.rstrip("/"), settings.SLM_API_TOKEN or "")
    with _clients_lock:
        known = _clients.get(purpose)
        if known is None or known[0] != signature:
            client = SlmClient(settings.SLM_API_URL, settings.SLM_API_TOKEN or None, **options)
            _clients[purpose] = (signature, client)
            return client
        return known[1]


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


# ----------------------------------------------------------------------------------------------------
# Service discovery and the fleet summary


@dataclass(frozen=True)
class DiscoveryResult:
    """Where a service runs. ``endpoints`` are in the SLM's order, healthy ones first; ``stale`` means
    the SLM is down and this is its last answer, from ``fetched_at``."""

    service: str
    registry_name: str
    endpoints: tuple[ServiceEndpoint, ...]
    stale: bool
    fetched_at: datetime

    @property
    def healthy(self) -> tuple[ServiceEndpoint, ...]:
        return tuple(endpoint for endpoint in self.endpoints if endpoint.healthy)


@dataclass(frozen=True)
class FleetSummaryResult:
    summary: FleetSummary
    stale: bool
    fetched_at: datetime


def discover(service: str) -> DiscoveryResult:
    """The endpoints of ``service`` (a business name such as ``llm``, or a registry name), cached.

    Raises ``SlmNeverAnswered`` when the SLM is down and never answered, ``SlmRequestFailed`` when
    it refuses (scope ``discovery:read`` needed).
    """
    name = registry_name(service)
    endpoints, stale, fetched_at = _answer(
        f"discover:{quote(name, safe='')}",
        fetch=lambda client: client.discover(name),
        dump=lambda value: [endpoint.model_dump(mode="json") for endpoint in value],
        load=lambda data: [ServiceEndpoint.model_validate(item) for item in data],
    )
    return DiscoveryResult(
        service=service, registry_name=name, endpoints=tuple(endpoints), stale=stale, fetched_at=fetched_at
    )


def fleet_summary() -> FleetSummaryResult:
    """Node counts by state and role and the nodes needing attention, cached (scope ``nodes:read``)."""
    summary, stale, fetched_at = _answer(
        "fleet-summary",
        fetch=lambda client: client.fleet_summary(),
        dump=lambda value: value.model_dump(mode="json"),
        load=FleetSummary.model_validate,
    )
    return FleetSummaryResult(summary=summary, stale=stale, fetched_at=fetched_at)


def _answer(
    name: str,
    *,
    fetch: Callable[[SlmClient], T],
    dump: Callable[[T], Any],
    load: Callable[[Any], T],
) -> tuple[T, bool, datetime]:
    """``(value, stale, fetched_at)``: fresh from the cache, else from the SLM, else the last known.

    The cache holds one entry per question, ``{"fetched_at": epoch seconds, "value": JSON data}``, kept
    for a week; it counts as fresh for ``SLM_CACHE_TTL`` seconds. Values are stored as JSON data and
    validated again on the way out, so an entry written by another version of the code is never
    trusted blindly (one that no longer validates counts as absent).
    """
    key = _cache_key(name)
    outage_key = _cache_key(f"outage:{name}")
    ttl = settings.SLM_CACHE_TTL
    known = _cached_value(key, load)
    if known is not None and time.time() - known[1] < ttl:
        return known[0], False, _as_datetime(known[1])
    recent_failure = cache.get(outage_key)
    if recent_failure is None:
        try:
            value = fetch(get_client())
        except (SlmUnavailable, ServerError) as exc:
            recent_failure = exc.code
            cache.set(outage_key, exc.code, timeout=min(ttl, OUTAGE_BACKOFF_SECONDS))
            logger.warning("SLM %s: %s; serving the last known answer if any", name, exc.code)
        except ContractError as exc:
            raise SlmRequestFailed(f"the SLM refused {name}: {exc.code}", code=exc.code) from exc
        else:
            fetched_at = time.time()
            cache.set(key, {"fetched_at": fetched_at, "value": dump(value)}, timeout=_LAST_KNOWN_TTL)
            return value, False, _as_datetime(fetched_at)
    if known is None:
        raise SlmNeverAnswered(f"the SLM is down and never answered {name}", code=recent_failure)
    return known[0], True, _as_datetime(known[1])


def _cached_value(key: str, load: Callable[[Any], T]) -> tuple[T, float] | None:
    entry = cache.get(key)
    if not isinstance(entry, dict):
        return None
    try:
        return load(entry["value"]), float(entry["fetched_at"])
    except (KeyError, TypeError, ValueError, ValidationError):
        return None


def _as_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


# ----------------------------------------------------------------------------------------------------
# Infrastructure actions


def request_deployment(
    *,
    nodes: Iterable[str],
    roles: Iterable[str],
    idempotency_key: str,
    strategy: str = "all_at_once",
    strategy_options: Mapping[str, Any] | None = None,
    extra_vars: Mapping[str, Any] | None = None,
) -> DeploymentDetail:
    """Ask the SLM to deploy ``roles`` onto ``nodes`` (node ids); the queued deployment comes back.

    ``idempotency_key`` names the request (say, the workflow step that asks): sending it again returns
    the same deployment, so a retried job never deploys twice. Raises ``SlmDeploymentRefused`` when the
    SLM says no (with its code and field errors) and ``SlmDown`` when it cannot be reached.
    """
    try:
        return get_client().create_deployment(
            nodes=list(nodes),
            roles=list(roles),
            strategy=strategy,
            strategy_options=strategy_options,
            extra_vars=extra_vars,
            idempotency_key=idempotency_key,
        )
    except (SlmUnavailable, ServerError) as exc:
        logger.warning("SLM deployment request %s: %s", idempotency_key, exc.code)
        raise SlmDown(f"the SLM did not take the deployment request: {exc.code}", code=exc.code) from exc
    except ContractError as exc:
        raise SlmDeploymentRefused(exc.message, code=exc.code, fields=exc.fields) from exc


# ----------------------------------------------------------------------------------------------------
# Readiness


@dataclass(frozen=True)
class SlmStatus:
    """Whether the SLM answered just now, what it last said about itself, and whether it accepts our
    token: ``accepted``, ``rejected`` (unknown, revoked or expired), ``insufficient_scope`` (no
    ``discovery:read``), ``missing`` (none configured) or ``unchecked`` (the SLM did not answer)."""

    reachable: bool
    url: str
    token: str
    latency_ms: float | None = None
    slm_version: str | None = None
    contract_version: str | None = None
    error: str | None = None
    last_seen: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def slm_status() -> SlmStatus:
    """Ask the SLM now (``GET /api/v1/meta``, then one authenticated call), never from cache: readiness
    reports must be current.

    Never raises: an unreachable or incompatible SLM, or a rejected token, is a status, not an error,
    for the business app.
    """
    url = settings.SLM_API_URL
    client = _probe_client()
    started = time.perf_counter()
    try:
        meta = client.meta()
    except ContractError as exc:
        last: dict[str, Any] | None = cache.get(_cache_key("meta:last"))
        return SlmStatus(
            reachable=False,
            url=url,
            token="missing" if not settings.SLM_API_TOKEN else "unchecked",
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
        token=_token_status(client),
        latency_ms=latency_ms,
        slm_version=meta.version,
        contract_version=meta.contract_version,
        last_seen=seen_at,
    )


def _token_status(client: SlmClient) -> str:
    """One authenticated request the business app really makes: the LLM lookup (a small answer)."""
    if not settings.SLM_API_TOKEN:
        return "missing"
    try:
        client.discover(registry_name(LLM))
    except AuthenticationFailed:
        return "rejected"
    except PermissionDenied:
        return "insufficient_scope"
    except ContractError:
        return "unchecked"
    return "accepted"


def _remember_meta(meta: MetaInfo, seen_at: str) -> None:
    value = {
        "version": meta.version,
        "contract_version": meta.contract_version,
        "seen_at": seen_at,
    }
    cache.set(_cache_key("meta:last"), value, timeout=_LAST_KNOWN_TTL)


def _cache_key(name: str) -> str:
    return f"{CACHE_PREFIX}:{name}"
