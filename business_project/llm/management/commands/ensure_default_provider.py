"""Register the default LLM provider, idempotently (``make run`` runs it on every start).

By default that is the embedded llama.cpp server (Procfile ``llm-local``) as an OpenAI-compatible
provider named ``local`` serving ``gemma-3-270m``. The ``LLM_DEFAULT_*`` settings point it elsewhere::

    BUSINESS_LLM_DEFAULT_KIND=ollama BUSINESS_LLM_DEFAULT_BASE_URL=http://127.0.0.1:11434 \\
    BUSINESS_LLM_DEFAULT_MODEL=llama3.2 make run

The provider of that name is created when missing, and its kind, base URL and model follow the settings
on every run; everything else (enabled, priority, parameters, timeouts, more models) is the admin's.
It becomes the default provider when it is created while no other provider is the default. An API key
comes only from ``LLM_DEFAULT_API_KEY`` (never from a command line) and is sealed; it is never printed.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from business_project.llm import vault
from business_project.llm.choices import ProviderKind
from business_project.llm.events import InvalidLlmRequest
from business_project.llm.models import Provider, ProviderModel
from business_project.llm.services import provider_save


class Command(BaseCommand):
    help = "Create or update the default LLM provider from the LLM_DEFAULT_* settings (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--name", default=None, help="Provider name (LLM_DEFAULT_PROVIDER_NAME).")
        parser.add_argument("--kind", default=None, choices=ProviderKind.values, help="LLM_DEFAULT_KIND")
        parser.add_argument("--base-url", default=None, help="LLM_DEFAULT_BASE_URL")
        parser.add_argument("--model", default=None, help="LLM_DEFAULT_MODEL")
        parser.add_argument("--context-window", type=int, default=None, help="LLM_DEFAULT_CONTEXT_WINDOW")

    def handle(self, *args, **options) -> None:
        name = options["name"] or settings.LLM_DEFAULT_PROVIDER_NAME
        kind = options["kind"] or settings.LLM_DEFAULT_KIND
        base_url = options["base_url"] or settings.LLM_DEFAULT_BASE_URL
        model = options["model"] or settings.LLM_DEFAULT_MODEL
        context_window = options["context_window"] or settings.LLM_DEFAULT_CONTEXT_WINDOW
        if kind not in ProviderKind.values:
            raise CommandError(
                f"LLM_DEFAULT_KIND must be one of {', '.join(ProviderKind.values)}, not {kind!r}"
            )
        if context_window is not None and context_window < 1:
            raise CommandError("the context window must be a positive number of tokens")
        try:
            with transaction.atomic():
                provider, created = self._provider(name=name, kind=kind, base_url=base_url)
                model_created = self._model(provider, model=model, context_window=context_window)
        except (ValidationError, InvalidLlmRequest) as exc:
            raise CommandError(f"the default LLM provider is not valid: {exc}") from None
        except vault.VaultError as exc:
            raise CommandError(str(exc)) from None
        state = "created" if created else "up to date"
        default = "the default" if provider.is_default else "not the default (another provider is)"
        self.stdout.write(
            f"LLM provider {provider.name!r} ({provider.kind}, {provider.base_url}) {state}, {default}; "
            f"model {model!r} {'added' if model_created else 'registered'}."
        )

    def _provider(self, *, name: str, kind: str, base_url: str) -> tuple[Provider, bool]:
        provider = Provider.objects.select_for_update().filter(name=name).first()
        created = provider is None
        if created:
            provider = Provider(
                name=name,
                kind=kind,
                base_url=base_url,
                priority=10,
                is_default=not Provider.objects.filter(is_default=True).exists(),
            )
        changed = created or provider.kind != kind or provider.base_url != base_url or provider.discover
        provider.kind, provider.base_url, provider.discover = kind, base_url, False
        api_key = settings.LLM_DEFAULT_API_KEY or None
        if api_key and not created and provider.has_api_key:
            try:
                current = vault.open_sealed(
                    provider.sealed_api_key, context=provider.api_key_context
                ).decode()
            except vault.VaultError:
                current = None  # unreadable (the master keys changed): the configured key replaces it
            api_key = None if current == api_key else api_key
        if changed or api_key:
            provider_save(provider=provider, api_key=api_key)
        return provider, created

    def _model(self, provider: Provider, *, model: str, context_window: int | None) -> bool:
        existing = ProviderModel.objects.filter(provider=provider, name=model).first()
        if existing is not None:
            if not existing.context_window and context_window:
                existing.context_window = context_window
                existing.save(update_fields=["context_window"])
            return False
        entry = ProviderModel(
            provider=provider,
            name=model,
            context_window=context_window,
            is_default=not provider.models.filter(is_default=True).exists(),
        )
        entry.full_clean()
        entry.save()
        return True
