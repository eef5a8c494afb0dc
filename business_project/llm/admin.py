"""LLM providers in the admin: created and changed through the services, probed and reset by actions.

The API key is write-only: its field is a password input that never renders a value (not even after a
failed submit), and no page shows the key, its ciphertext or its wrapped data key — only whether one is
set and under which master key id.
"""

from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from business_project.llm.clients import scrub
from business_project.llm.events import InvalidLlmRequest
from business_project.llm.models import Provider, ProviderHealthCheck, ProviderModel
from business_project.llm.selectors import provider_status
from business_project.llm.services import (
    api_key_clean,
    provider_delete,
    provider_health_check_run,
    provider_reset_breaker,
    provider_save,
)


class ProviderForm(forms.ModelForm):
    # Plain http is the norm for a model server on the local network; say so instead of assuming https.
    base_url = forms.URLField(
        assume_scheme="http",
        required=False,
        max_length=Provider._meta.get_field("base_url").max_length,
        help_text=Provider._meta.get_field("base_url").help_text,
    )
    api_key = forms.CharField(
        label="API key",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        required=False,
        help_text="Write-only: encrypted on save and never shown. Leave empty to keep the current one.",
    )
    clear_api_key = forms.BooleanField(label="Remove the API key", required=False)

    class Meta:
        model = Provider
        fields = (
            "name",
            "kind",
            "base_url",
            "discover",
            "enabled",
            "is_default",
            "priority",
            "default_params",
            "connect_timeout",
            "first_token_timeout",
            "read_timeout",
        )

    def clean_api_key(self) -> str:
        api_key = self.cleaned_data.get("api_key") or ""
        if api_key:
            try:
                api_key_clean(api_key)
            except InvalidLlmRequest as exc:
                raise forms.ValidationError(str(exc.detail)) from None
        return api_key

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("api_key") and cleaned.get("clear_api_key"):
            self.add_error("clear_api_key", "Give a new key or remove it, not both.")
        return cleaned

    def _get_validation_exclusions(self):
        # Making this provider the default takes the flag from the previous one (provider_save), so the
        # one-default constraint is not an input error here.
        exclude = super()._get_validation_exclusions()
        exclude.add("is_default")
        return exclude


class ProviderModelInline(admin.TabularInline):
    model = ProviderModel
    extra = 0
    fields = ("name", "display_name", "context_window", "default_params", "enabled", "is_default")


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    inlines = [ProviderModelInline]
    list_display = (
        "name",
        "kind",
        "address",
        "enabled",
        "is_default",
        "priority",
        "status",
        "consecutive_failures",
        "breaker_opened_until",
        "last_checked_at",
        "api_key_set",
    )
    list_filter = ("kind", "enabled", "is_default", "discover")
    search_fields = ("name", "base_url")
    actions = ["probe_now", "reset_breaker"]
    readonly_fields = (
        "status",
        "api_key_status",
        "consecutive_failures",
        "breaker_opened_until",
        "last_failure_at",
        "last_error",
        "last_checked_at",
        "last_check_ok",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "kind", "base_url", "discover", "enabled", "is_default", "priority")}),
        (
            "Requests",
            {"fields": ("default_params", "connect_timeout", "first_token_timeout", "read_timeout")},
        ),
        ("API key", {"fields": ("api_key", "clear_api_key", "api_key_status")}),
        (
            "Health and circuit breaker",
            {
                "fields": (
                    "status",
                    "consecutive_failures",
                    "breaker_opened_until",
                    "last_failure_at",
                    "last_error",
                    "last_checked_at",
                    "last_check_ok",
                    "created_at",
                    "updated_at",
                )
            },
        ),
    )

    @admin.display(description="URL")
    def address(self, obj: Provider) -> str:
        return "discovered through the SLM" if obj.discover else scrub(obj.base_url)

    @admin.display(description="status")
    def status(self, obj: Provider) -> str:
        return provider_status(obj)

    @admin.display(description="API key", boolean=True)
    def api_key_set(self, obj: Provider) -> bool:
        return obj.has_api_key

    @admin.display(description="API key")
    def api_key_status(self, obj: Provider) -> str:
        if not obj.has_api_key:
            return "none"
        changed = f", set {obj.api_key_changed_at:%Y-%m-%d %H:%M}" if obj.api_key_changed_at else ""
        return f"set (sealed under master key {obj.api_key_master_key_id}{changed})"

    def save_model(self, request, obj, form, change):
        provider_save(
            provider=obj,
            api_key=form.cleaned_data.get("api_key") or None,
            clear_api_key=bool(form.cleaned_data.get("clear_api_key")),
        )

    def delete_model(self, request, obj):
        provider_delete(provider=obj)

    def delete_queryset(self, request, queryset):
        for provider in queryset:
            provider_delete(provider=provider)

    @admin.action(description="Probe the selected providers now")
    def probe_now(self, request, queryset):
        checks = provider_health_check_run(provider_ids=list(queryset.values_list("pk", flat=True)))
        names = dict(queryset.values_list("pk", "name"))
        for check in checks:
            name = names.get(check.provider_id, check.provider_id)
            if check.ok:
                self.message_user(request, f"{name}: ok in {check.latency_ms:.0f} ms", messages.SUCCESS)
            else:
                self.message_user(request, f"{name}: {check.error}", messages.ERROR)

    @admin.action(description="Close the circuit breaker of the selected providers")
    def reset_breaker(self, request, queryset):
        for provider in queryset:
            provider_reset_breaker(provider=provider)
        self.message_user(request, f"Breakers closed at {timezone.now():%H:%M:%S}.", messages.SUCCESS)


@admin.register(ProviderHealthCheck)
class ProviderHealthCheckAdmin(admin.ModelAdmin):
    list_display = ("checked_at", "provider", "ok", "latency_ms", "status_code", "error")
    list_filter = ("ok", "provider")
    list_select_related = ("provider",)
    date_hierarchy = "checked_at"
    readonly_fields = (
        "provider",
        "checked_at",
        "ok",
        "latency_ms",
        "status_code",
        "error",
        "models_seen",
        "url",
    )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
