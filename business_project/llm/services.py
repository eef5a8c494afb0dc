"""LLM providers: writes (providers, keys, circuit breaker, health history) and the streaming interface.

Streaming interface (what the chat calls)
=========================================

``await open_stream(*, messages, provider_id=None, model=None, params=None) -> LlmStream``

- ``messages``: ``[{"role": "system" | "user" | "assistant", "content": str}, …]`` (non-empty; the last
  one is what is answered). ``params``: OpenAI-style generation parameters (``temperature``,
  ``max_tokens``, ``top_p``, ``stop``, ``seed`` …), over the provider's and the model's defaults.
- The chain: the requested provider first (``provider_id``; unknown id: ``ProviderNotFound``, 404),
  then every other enabled provider, the default first, then by ``priority``. With ``model`` and no
  provider, the providers that list that model come first. A provider uses ``model`` when it is the
  requested one or lists it, otherwise its own default model.
- Each provider is tried in turn, skipping disabled ones, open circuit breakers, providers without a
  URL (discovery failed) or model. Connection errors, HTTP errors, garbage, an error in the stream or no
  first token within the provider's ``first_token_timeout`` fail over to the next one and count on the
  provider's breaker. It returns once the first token (or an empty answer's end) has arrived.
- All failed or skipped: ``NoProviderAvailable`` (503) with ``attempts`` (each provider and reason).
  Malformed ``messages``/``params``: ``InvalidLlmRequest`` (400).

``LlmStream`` (``business_project.llm.streaming``) is an async iterator of events: ``TextDelta(text)``
zero or more times, then exactly one ``StreamEnd(stop_reason, usage=Usage(prompt_tokens,
completion_tokens, estimated), duration)``. After the first token there is no failover: a dropped
connection, garbage or silence past ``read_timeout`` raises ``StreamBroken`` (502; ``provider``,
``model``, ``reason``) and counts on the breaker; keeping the text received so far is the caller's
business. Attributes: ``provider`` (``ProviderRef(id, name, kind)``), ``model``, ``time_to_first_token``
(seconds since ``open_stream`` was called, failed attempts included), ``attempts`` (providers given up
before this one). ``await stream.aclose()`` cancels the upstream request at once (the connection is
closed; the server sees the client leave); iteration then ends without a ``StreamEnd``. ``async with
stream:`` closes on exit.

Cost per token: no database access, no logging; connections are kept alive per event loop (``wire.py``).
The provider chain is a per-process snapshot (``business_project.llm.chain``) refreshed every
``LLM_PROVIDER_CACHE_SECONDS``; writes here drop it at once in this process.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from business_project.llm import chain, clients, vault
from business_project.llm.chain import ProviderConfig
from business_project.llm.events import (
    Attempt,
    InvalidLlmRequest,
    LlmError,
    NoProviderAvailable,
    ProviderNotFound,
    ProviderRef,
    StreamBroken,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)
from business_project.llm.models import Provider, ProviderHealthCheck
from business_project.llm.streaming import AttemptFailed, LlmStream, start_attempt

__all__ = [
    "Attempt",
    "InvalidLlmRequest",
    "LlmError",
    "LlmStream",
    "NoProviderAvailable",
    "ProviderNotFound",
    "ProviderRef",
    "StreamBroken",
    "StreamEnd",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "api_key_clean",
    "open_stream",
    "provider_clear_api_key",
    "provider_delete",
    "provider_health_check_run",
    "provider_health_prune",
    "provider_record_failure",
    "provider_record_success",
    "provider_reset_breaker",
    "provider_rewrap_api_key",
    "provider_save",
    "provider_set_api_key",
]

logger = logging.getLogger(__name__)

ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_API_KEY_LENGTH = 4096
API_KEY_WRAP_FIELDS = ("api_key_master_key_id", "api_key_wrapped_data_key", "api_key_key_nonce")


# --------------------------------------------------------------------------------------------------
# Providers and their keys


def _invalidate_chain() -> None:
    """Drop this process's chain snapshot now (the writing transaction sees its own rows) and again
    after commit (a snapshot another thread built in between saw the rows before it)."""
    chain.invalidate_chain()
    transaction.on_commit(chain.invalidate_chain)


def api_key_clean(api_key: str) -> bytes:
    """The key as stored (stripped); raises ``InvalidLlmRequest`` without quoting it."""
    key = api_key.strip()
    if not key:
        raise InvalidLlmRequest("The API key must not be empty.")
    if len(key) > MAX_API_KEY_LENGTH or any(ch.isspace() for ch in key):
        # Not quoted: whatever was pasted may be a real key.
        raise InvalidLlmRequest("The API key must be one word of at most 4096 characters.")
    return key.encode()


@transaction.atomic
def provider_save(*, provider: Provider, api_key: str | None = None, clear_api_key: bool = False) -> Provider:
    """Validate and save ``provider`` (new or changed); with ``api_key``, seal it as the provider's key
    in the same transaction; with ``clear_api_key``, drop the key. Making it the default takes the
    flag from any other provider."""
    if api_key is not None and clear_api_key:
        raise InvalidLlmRequest("Give a new API key or clear it, not both.")
    sealed = api_key_clean(api_key) if api_key is not None else None
    if provider.pk is None:
        # The admin clears a new parent's generated key while it builds inlines; the key's ciphertext
        # is bound to the id, so the id must exist before sealing.
        provider.pk = uuid.uuid4()
    # The one-default constraint is kept by moving the flag below, not by refusing the change.
    provider.full_clean(exclude=["is_default"])
    if provider.is_default:
        Provider.objects.filter(is_default=True).exclude(pk=provider.pk).update(is_default=False)
    if sealed is not None:
        provider.set_sealed_api_key(vault.seal(sealed, context=provider.api_key_context))
        provider.api_key_changed_at = timezone.now()
    elif clear_api_key:
        provider.set_sealed_api_key(None)
        provider.api_key_changed_at = timezone.now()
    provider.save()
    _invalidate_chain()
    logger.info(
        "llm provider saved id=%s name=%s kind=%s enabled=%s default=%s key=%s",
        provider.id,
        provider.name,
        provider.kind,
        provider.enabled,
        provider.is_default,
        "set" if sealed is not None else ("cleared" if clear_api_key else "unchanged"),
    )
    return provider


def provider_set_api_key(*, provider: Provider, api_key: str) -> Provider:
    return provider_save(provider=provider, api_key=api_key)


def provider_clear_api_key(*, provider: Provider) -> Provider:
    return provider_save(provider=provider, clear_api_key=True)


@transaction.atomic
def provider_rewrap_api_key(*, provider: Provider, key_id: str) -> Provider:
    """Wrap the data key of ``provider``'s API key with master key ``key_id`` (rotation); the ciphertext
    is not touched and the key is not decrypted. Works on the locked current row; a provider without a
    key, or already under ``key_id``, is left alone."""
    current = Provider.objects.select_for_update().get(pk=provider.pk)
    sealed = current.sealed_api_key
    if sealed is not None and sealed.master_key_id != key_id:
        previous = sealed.master_key_id
        current.set_sealed_api_key(vault.rewrap(sealed, key_id=key_id))
        current.save(update_fields=[*API_KEY_WRAP_FIELDS])
        logger.info(
            "llm provider key rewrapped name=%s from_master_key_id=%s to_master_key_id=%s",
            current.name,
            previous,
            key_id,
        )
    for field in API_KEY_WRAP_FIELDS:
        setattr(provider, field, getattr(current, field))
    return provider


@transaction.atomic
def provider_delete(*, provider: Provider) -> None:
    provider_id, name = provider.id, provider.name
    provider.delete()
    _invalidate_chain()
    logger.info("llm provider deleted id=%s name=%s", provider_id, name)


# --------------------------------------------------------------------------------------------------
# Circuit breaker


@transaction.atomic
def provider_record_failure(*, provider_id: uuid.UUID, error: str) -> Provider | None:
    """Count one failure; at the threshold the breaker opens for the cooldown (again, when a trial after
    the cooldown fails). ``error`` must be scrubbed already. None when the provider is gone."""
    provider = Provider.objects.select_for_update().filter(pk=provider_id).first()
    if provider is None:
        return None
    now = timezone.now()
    provider.consecutive_failures += 1
    provider.last_failure_at = now
    provider.last_error = error[: Provider._meta.get_field("last_error").max_length]
    opened = False
    if provider.consecutive_failures >= settings.LLM_BREAKER_FAILURE_THRESHOLD:
        opened = not (provider.breaker_opened_until and provider.breaker_opened_until > now)
        provider.breaker_opened_until = now + timedelta(seconds=settings.LLM_BREAKER_COOLDOWN_SECONDS)
    provider.save(
        update_fields=["consecutive_failures", "last_failure_at", "last_error", "breaker_opened_until"]
    )
    _invalidate_chain()
    if opened:
        logger.warning(
            "llm provider breaker opened name=%s failures=%s until=%s error=%s",
            provider.name,
            provider.consecutive_failures,
            provider.breaker_opened_until.isoformat(),
            error,
        )
    return provider


@transaction.atomic
def provider_record_success(*, provider_id: uuid.UUID) -> Provider | None:
    """A success closes the breaker and clears the failure count (no write when there is nothing to clear)."""
    provider = Provider.objects.select_for_update().filter(pk=provider_id).first()
    if provider is None or (provider.consecutive_failures == 0 and provider.breaker_opened_until is None):
        return provider
    was_open = provider.breaker_opened_until is not None
    provider.consecutive_failures = 0
    provider.breaker_opened_until = None
    provider.save(update_fields=["consecutive_failures", "breaker_opened_until"])
    _invalidate_chain()
    if was_open:
        logger.info("llm provider breaker closed name=%s", provider.name)
    return provider


def provider_reset_breaker(*, provider: Provider) -> Provider | None:
    """Close the breaker by hand (admin action)."""
    return provider_record_success(provider_id=provider.id)


# --------------------------------------------------------------------------------------------------
# Health probes


def _probe_all(configs: list[ProviderConfig]) -> list[clients.ProbeResult]:
    async def run() -> list[clients.ProbeResult]:
        async with clients.new_http_client() as client:
            return await asyncio.gather(
                *(
                    clients.probe(
                        client,
                        kind=config.kind,
                        base_url=config.base_url,
                        api_key=config.api_key,
                        timeout=settings.LLM_HEALTH_TIMEOUT_SECONDS,
                    )
                    for config in configs
                )
            )

    return asyncio.run(run())


def provider_health_check_run(*, provider_ids: list[uuid.UUID] | None = None) -> list[ProviderHealthCheck]:
    """Probe every enabled provider (or those of ``provider_ids``) with a zero-token call, concurrently;
    record one ``ProviderHealthCheck`` each and feed the breaker (a failure counts, a success closes it).

    Probes ignore the breaker: they are how an open one learns that the provider is back.
    """
    providers = Provider.objects.filter(enabled=True).prefetch_related("models")
    if provider_ids is not None:
        providers = Provider.objects.filter(pk__in=provider_ids).prefetch_related("models")
    providers = list(providers)
    if not providers:
        return []
    discovered = chain.discovered_llm_url() if any(p.discover for p in providers) else None
    configs = [chain.provider_config(provider, discovered=discovered) for provider in providers]
    reachable = [config for config in configs if not config.unusable]
    results = dict(zip((config.id for config in reachable), _probe_all(reachable), strict=True))
    checks = []
    now = timezone.now()
    for config in configs:
        result = results.get(config.id) or clients.ProbeResult(False, None, "", None, config.unusable)
        checks.append(
            ProviderHealthCheck(
                provider_id=config.id,
                checked_at=now,
                ok=result.ok,
                latency_ms=round(result.latency_ms, 2) if result.latency_ms is not None else None,
                status_code=result.status_code,
                error=result.error,
                models_seen=list(result.models),
                url=result.url,
            )
        )
    with transaction.atomic():
        ProviderHealthCheck.objects.bulk_create(checks)
        Provider.objects.filter(pk__in=[check.provider_id for check in checks if check.ok]).update(
            last_checked_at=now, last_check_ok=True
        )
        Provider.objects.filter(pk__in=[check.provider_id for check in checks if not check.ok]).update(
            last_checked_at=now, last_check_ok=False
        )
        for check in checks:
            if check.ok:
                provider_record_success(provider_id=check.provider_id)
            else:
                provider_record_failure(provider_id=check.provider_id, error=check.error)
        _invalidate_chain()
    failed = [config.name for config, check in zip(configs, checks, strict=True) if not check.ok]
    logger.info("llm provider health probed=%s failed=%s", len(checks), ",".join(failed) or "-")
    return checks


def provider_health_prune() -> int:
    """Delete health checks older than ``LLM_HEALTH_RETENTION_DAYS``."""
    cutoff = timezone.now() - timedelta(days=settings.LLM_HEALTH_RETENTION_DAYS)
    deleted, _ = ProviderHealthCheck.objects.filter(checked_at__lt=cutoff).delete()
    return deleted


# --------------------------------------------------------------------------------------------------
# Streaming


def _db(function):
    """``function`` run in a thread, as async code must run the ORM; stale connections are dropped
    first, as a request would (not inside a transaction, where the connection is the caller's)."""

    def call(*args, **kwargs):
        if not connection.in_atomic_block:
            close_old_connections()
        return function(*args, **kwargs)

    return sync_to_async(call, thread_sensitive=True)


_load_chain = _db(chain.load_chain)
_provider_name = _db(
    lambda provider_id: Provider.objects.filter(pk=provider_id).values_list("name", flat=True).first()
)
_record_failure = _db(provider_record_failure)
_record_success = _db(provider_record_success)


def _validate(messages: Any, params: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidLlmRequest("messages must be a non-empty list.")
    for position, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise InvalidLlmRequest(
                f"message {position} must be an object with a role ({', '.join(sorted(ROLES))}) "
                "and text content."
            )
    if params is not None and not isinstance(params, dict):
        raise InvalidLlmRequest("params must be an object.")


def _plan(
    configs: tuple[ProviderConfig, ...], *, provider_id: uuid.UUID | None, model: str | None
) -> list[ProviderConfig]:
    """The providers to try, in order (see the module docstring)."""
    if provider_id is not None:
        requested = [config for config in configs if config.id == provider_id]
        return requested + [config for config in configs if config.id != provider_id]
    if model:
        offering = [config for config in configs if config.model(model)]
        return offering + [config for config in configs if not config.model(model)]
    return list(configs)


def _skip_reason(config: ProviderConfig, *, model: str | None, now) -> str:
    if config.unusable:
        return config.unusable
    if model is None:
        return "no model configured"
    if config.breaker_open(now):
        return f"circuit open until {config.breaker_opened_until:%H:%M:%S}"
    return ""


async def _feed_breaker(config: ProviderConfig, *, error: str | None) -> None:
    """Record a failure (``error``) or a success on the breaker. Never raises: the caller must get its
    stream, or its typed error, not a bookkeeping error (the database may be what is failing)."""
    try:
        if error is None:
            await _record_success(provider_id=config.id)
        else:
            await _record_failure(provider_id=config.id, error=error)
    except Exception:
        logger.exception("llm breaker update failed provider=%s", config.name)


async def _on_broken(config: ProviderConfig, reason: str) -> None:
    logger.warning("llm stream broke provider=%s reason=%s", config.name, reason)
    await _feed_breaker(config, error=reason)


async def open_stream(
    *,
    messages: list[dict],
    provider_id: uuid.UUID | str | None = None,
    model: str | None = None,
    params: dict | None = None,
) -> LlmStream:
    """Stream an answer from the first provider of the chain that produces a first token (module
    docstring). Raises ``NoProviderAvailable``, ``ProviderNotFound`` or ``InvalidLlmRequest``."""
    started = time.perf_counter()
    _validate(messages, params)
    if provider_id is not None and not isinstance(provider_id, uuid.UUID):
        try:
            provider_id = uuid.UUID(str(provider_id))
        except ValueError:
            raise ProviderNotFound(f"No LLM provider {provider_id!r}.") from None
    # The snapshot is fresh nearly always: read it here rather than queueing behind the database work
    # of every other request in asgiref's one thread.
    configs = chain.fresh_chain() or await _load_chain()
    attempts: list[Attempt] = []
    if provider_id is not None and not any(config.id == provider_id for config in configs):
        name = await _provider_name(provider_id)
        if name is None:
            raise ProviderNotFound(f"No LLM provider {provider_id}.")
        # It exists but is disabled: the rest of the chain answers, and the attempts say why.
        attempts.append(Attempt(provider_id, name, model, "disabled", counted=False))
    now = timezone.now()
    for config in _plan(configs, provider_id=provider_id, model=model):
        chosen = model if model and (config.id == provider_id or config.model(model)) else None
        model_config = config.model(chosen) if chosen else config.default_model
        name = chosen or (model_config.name if model_config else None)
        skip = _skip_reason(config, model=name, now=now)
        if skip:
            attempts.append(Attempt(config.id, config.name, name, skip, counted=False))
            continue
        try:
            stream = await start_attempt(
                config,
                model=name,
                model_config=model_config,
                messages=messages,
                params=params,
                started=started,
                on_broken=_on_broken,
            )
        except AttemptFailed as exc:
            attempts.append(Attempt(config.id, config.name, name, exc.reason, counted=exc.counted))
            logger.warning("llm attempt failed provider=%s model=%s reason=%s", config.name, name, exc.reason)
            if exc.counted:
                await _feed_breaker(config, error=exc.reason)
            continue
        stream.attempts = tuple(attempts)
        if config.consecutive_failures or config.breaker_opened_until:
            try:
                await _feed_breaker(config, error=None)
            except BaseException:
                await stream.aclose()  # cancelled here: the caller never gets the stream to close
                raise
        return stream
    raise NoProviderAvailable(attempts)
