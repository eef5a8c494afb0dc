import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Length
from django.db.models.lookups import Exact

from business_project.llm import vault
from business_project.llm.choices import ProviderKind
from business_project.llm.constants import (
    API_KEY_CONTEXT_PREFIX,
    ERROR_TEXT_MAX_LENGTH,
    NAME_MAX_LENGTH,
    URL_MAX_LENGTH,
)


def _sealed_length(field: str, size: int, name: str) -> models.CheckConstraint:
    # Either no key at all (NULL) or exactly the vault's size: a row that breaks it was not written by it.
    return models.CheckConstraint(
        condition=models.Q(**{f"{field}__isnull": True}) | Exact(Length(field), size), name=name
    )


class Provider(models.Model):
    """An LLM server the chat streams from: Ollama (``/api/chat``) or OpenAI-compatible
    (``/v1/chat/completions``: vLLM, llama.cpp server, LM Studio, OpenAI).

    Domain rules:

    - The base URL is configured (``base_url``) or, with ``discover``, found through the SLM
      (``discover("llm")`` via the gateway) each time the chain is loaded; one of the two is required.
    - Requests use the *chain*: enabled providers, the default one first, then by ``priority`` (lower
      first) and name. A request fails over to the next one before the first token, never after it.
    - The API key is stored only envelope-encrypted (``business_project.llm.vault``), bound to this row's
      id; it is write-only: no page or API response carries it or its ciphertext. No key: all NULL.
    - Circuit breaker: ``consecutive_failures`` counts failed probes and requests in a row; at
      ``LLM_BREAKER_FAILURE_THRESHOLD`` the breaker opens until ``breaker_opened_until`` and the chain
      skips the provider; a success closes it. Written by ``services`` only.
    - At most one provider is the default (a partial unique constraint).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=NAME_MAX_LENGTH, unique=True)
    kind = models.CharField(max_length=16, choices=ProviderKind.choices, default=ProviderKind.OPENAI)
    base_url = models.URLField(
        max_length=URL_MAX_LENGTH,
        blank=True,
        help_text="e.g. http://127.0.0.1:11434 (Ollama) or http://127.0.0.1:8080/v1 (OpenAI-compatible; "
        "/v1 is added when missing). Empty when the URL is discovered through the SLM.",
    )
    discover = models.BooleanField(
        default=False, help_text="Find the base URL through the SLM's service discovery (the `llm` service)."
    )
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False, help_text="First in every chain.")
    priority = models.PositiveSmallIntegerField(
        default=100, help_text="Failover order after the default provider: lower first."
    )
    default_params = models.JSONField(
        default=dict,
        blank=True,
        help_text='Generation parameters sent with every request, e.g. {"temperature": 0.7}; a model\'s '
        "and the request's own parameters override them.",
    )
    connect_timeout = models.FloatField(default=5.0, help_text="Seconds to open a connection.")
    first_token_timeout = models.FloatField(
        default=60.0, help_text="Seconds from the request to the first token; past it the request fails over."
    )
    read_timeout = models.FloatField(
        default=60.0, help_text="Seconds the stream may stay silent after the first token."
    )

    # The API key, sealed (see the vault): all NULL when the provider needs none.
    api_key_master_key_id = models.CharField(max_length=vault.KEY_ID_MAX_LENGTH, blank=True, editable=False)
    api_key_wrapped_data_key = models.BinaryField(null=True, blank=True, editable=False)
    api_key_key_nonce = models.BinaryField(null=True, blank=True, editable=False)
    api_key_data_nonce = models.BinaryField(null=True, blank=True, editable=False)
    api_key_ciphertext = models.BinaryField(null=True, blank=True, editable=False)
    api_key_changed_at = models.DateTimeField(null=True, blank=True, editable=False)

    # Circuit breaker and the latest health, written by the services.
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    breaker_opened_until = models.DateTimeField(null=True, blank=True, editable=False)
    last_failure_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.CharField(max_length=ERROR_TEXT_MAX_LENGTH, blank=True, editable=False)
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_check_ok = models.BooleanField(null=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-is_default", "priority", "name"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(name=""), name="llm_provider_name_not_empty"),
            models.CheckConstraint(
                condition=models.Q(kind__in=ProviderKind.values), name="llm_provider_kind_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(discover=True) | ~models.Q(base_url=""),
                name="llm_provider_base_url_or_discover",
                violation_error_message="Set a base URL, or let the SLM discover it.",
            ),
            models.CheckConstraint(
                condition=models.Q(connect_timeout__gt=0, first_token_timeout__gt=0, read_timeout__gt=0),
                name="llm_provider_timeouts_positive",
                violation_error_message="Timeouts must be more than 0 seconds.",
            ),
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="llm_provider_one_default"
            ),
            _sealed_length("api_key_key_nonce", vault.NONCE_BYTES, "llm_provider_api_key_nonce_length"),
            _sealed_length("api_key_data_nonce", vault.NONCE_BYTES, "llm_provider_api_key_data_nonce_length"),
            _sealed_length(
                "api_key_wrapped_data_key", vault.WRAPPED_KEY_BYTES, "llm_provider_api_key_wrapped_length"
            ),
            # A key is all five parts or none.
            models.CheckConstraint(
                condition=(
                    models.Q(
                        api_key_ciphertext__isnull=True,
                        api_key_wrapped_data_key__isnull=True,
                        api_key_key_nonce__isnull=True,
                        api_key_data_nonce__isnull=True,
                        api_key_master_key_id="",
                    )
                    | models.Q(
                        api_key_ciphertext__isnull=False,
                        api_key_wrapped_data_key__isnull=False,
                        api_key_key_nonce__isnull=False,
                        api_key_data_nonce__isnull=False,
                    )
                    & ~models.Q(api_key_master_key_id="")
                ),
                name="llm_provider_api_key_complete",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.default_params, dict):
            raise ValidationError({"default_params": "Must be a JSON object."})

    @property
    def has_api_key(self) -> bool:
        return self.api_key_ciphertext is not None

    @property
    def api_key_context(self) -> str:
        """The associated data that binds the sealed key to this row."""
        return f"{API_KEY_CONTEXT_PREFIX}{self.id}"

    @property
    def sealed_api_key(self) -> vault.SealedValue | None:
        if not self.has_api_key:
            return None
        # Drivers return BinaryField values as memoryview (PostgreSQL) or bytes (SQLite).
        return vault.SealedValue(
            master_key_id=self.api_key_master_key_id,
            wrapped_data_key=bytes(self.api_key_wrapped_data_key),
            key_nonce=bytes(self.api_key_key_nonce),
            data_nonce=bytes(self.api_key_data_nonce),
            ciphertext=bytes(self.api_key_ciphertext),
        )

    def set_sealed_api_key(self, sealed: vault.SealedValue | None) -> None:
        self.api_key_master_key_id = sealed.master_key_id if sealed else ""
        self.api_key_wrapped_data_key = sealed.wrapped_data_key if sealed else None
        self.api_key_key_nonce = sealed.key_nonce if sealed else None
        self.api_key_data_nonce = sealed.data_nonce if sealed else None
        self.api_key_ciphertext = sealed.ciphertext if sealed else None


class ProviderModel(models.Model):
    """A model a provider serves, as the picker offers it.

    ``context_window`` is sent to servers that take it per request (Ollama's ``num_ctx``), so a long
    conversation is not cut at a server default. ``default_params`` override the provider's. At most
    one model per provider is its default (used when a request names no model).
    """

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=200)
    display_name = models.CharField(max_length=200, blank=True)
    context_window = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens; empty: server's.")
    default_params = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)

    class Meta:
        ordering = ["provider__name", "-is_default", "name"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "name"], name="llm_providermodel_unique_name"),
            models.UniqueConstraint(
                fields=["provider"],
                condition=models.Q(is_default=True),
                name="llm_providermodel_one_default_per_provider",
            ),
            models.CheckConstraint(condition=~models.Q(name=""), name="llm_providermodel_name_not_empty"),
            models.CheckConstraint(
                condition=models.Q(context_window__isnull=True) | models.Q(context_window__gt=0),
                name="llm_providermodel_context_window_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider.name}/{self.name}"

    def clean(self) -> None:
        if not isinstance(self.default_params, dict):
            raise ValidationError({"default_params": "Must be a JSON object."})


class ProviderHealthCheck(models.Model):
    """One probe of a provider (a zero-token call: Ollama ``/api/tags``, OpenAI-compatible ``/v1/models``).

    Kept ``LLM_HEALTH_RETENTION_DAYS``; ``error`` never holds a key or a URL's credentials.
    """

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="health_checks")
    checked_at = models.DateTimeField(db_index=True)
    ok = models.BooleanField()
    latency_ms = models.FloatField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=ERROR_TEXT_MAX_LENGTH, blank=True)
    models_seen = models.JSONField(default=list, blank=True)
    url = models.CharField(max_length=URL_MAX_LENGTH, blank=True, help_text="The URL probed.")

    class Meta:
        ordering = ["-checked_at", "-id"]
        indexes = [models.Index(fields=["provider", "-checked_at"], name="llm_health_provider_time")]

    def __str__(self) -> str:
        return f"{self.provider.name} {'ok' if self.ok else 'failed'} at {self.checked_at:%Y-%m-%d %H:%M:%S}"
