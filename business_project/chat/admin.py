"""Admins see the usage ledger and set per-user quotas here. Conversations are private to their owners
and are not shown."""

from django.contrib import admin

from business_project.chat.models import UsageRecord, UserQuota


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "user",
        "provider",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "time_to_first_token_ms",
        "total_ms",
        "outcome",
    )
    list_filter = ("outcome", "provider")
    search_fields = ("user__username", "provider", "model")
    date_hierarchy = "created_at"
    list_select_related = ("user",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    list_display = ("user", "requests_per_minute", "tokens_per_day")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
