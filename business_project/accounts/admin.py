from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from business_project.accounts.forms import AdminLoginForm
from business_project.accounts.models import ApiToken, User

# The admin's sign-in is throttled like the web app's.
admin.site.login_form = AdminLoginForm


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "role", "is_staff", "is_superuser", "is_active", "last_login")
    list_filter = ("role", *BaseUserAdmin.list_filter)
    fieldsets = (*BaseUserAdmin.fieldsets, ("Role", {"fields": ("role",)}))
    add_fieldsets = (*BaseUserAdmin.add_fieldsets, ("Role", {"fields": ("role",)}))


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Read-mostly: tokens are made by their owners (tokens page, API) or ``create_api_token`` and shown
    once; here an admin sees who holds access and can revoke it (set *revoked at*)."""

    list_display = ("name", "user", "scopes", "expires_at", "revoked_at", "last_used_at", "created_at")
    list_filter = ("revoked_at",)
    readonly_fields = ("user", "name", "lookup_id", "scopes", "expires_at", "last_used_at", "created_at")
    exclude = ("token_hash",)
    search_fields = ("name", "user__username")

    def has_add_permission(self, request) -> bool:
        return False
