from django.contrib import admin
from unfold.admin import ModelAdmin

from slm_project.access.models import ApiClient


@admin.register(ApiClient)
class ApiClientAdmin(ModelAdmin):
    """Read-mostly: tokens are made with ``manage_slm.py create_api_client`` (shown once); here an
    operator sees who has access and can revoke it."""

    list_display = ("name", "scopes", "expires_at", "revoked_at", "last_used_at", "created_at")
    readonly_fields = ("name", "lookup_id", "scopes", "expires_at", "last_used_at", "created_at")
    exclude = ("token_hash",)
    search_fields = ("name",)

    def has_add_permission(self, request) -> bool:
        return False
