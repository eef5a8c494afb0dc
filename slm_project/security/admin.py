"""Credentials in the ops portal: created, renamed, given a new secret and deleted through the services.

The secret is write-only: its field is a password input that never renders a value, and no page shows
the secret, its ciphertext or its wrapped data key.
"""

from django import forms
from django.contrib import admin
from unfold.admin import ModelAdmin
from unfold.widgets import UnfoldAdminPasswordWidget

from slm_project.security.models import Credential
from slm_project.security.services import (
    credential_delete,
    credential_rename,
    credential_replace_secret,
    credential_store,
)


class CredentialForm(forms.ModelForm):
    secret = forms.CharField(
        # render_value=False: the page never carries a secret back, not even after a failed submit.
        widget=UnfoldAdminPasswordWidget(render_value=False),
        strip=False,  # trailing newlines are part of an SSH private key
        required=False,
        help_text="Write-only: it is encrypted on save and never shown. Leave empty to keep the current one.",
    )

    class Meta:
        model = Credential
        fields = ("name", "kind")

    def clean(self):
        cleaned = super().clean()
        if self.instance._state.adding and not cleaned.get("secret"):
            self.add_error("secret", "A new credential needs its secret.")
        return cleaned


@admin.register(Credential)
class CredentialAdmin(ModelAdmin):
    form = CredentialForm
    list_display = ("name", "kind", "master_key_id", "created_at", "secret_changed_at", "rewrapped_at")
    list_filter = ("kind", "master_key_id")
    search_fields = ("name",)
    readonly_fields = ("master_key_id", "public_metadata", "created_at", "secret_changed_at", "rewrapped_at")

    def get_readonly_fields(self, request, obj=None):
        # The kind describes the sealed secret; a different kind is a different credential.
        return (*self.readonly_fields, "kind") if obj else self.readonly_fields

    def get_fields(self, request, obj=None):
        fields = ["name", "kind", "secret"]
        return [*fields, *self.readonly_fields] if obj else fields

    def save_model(self, request, obj, form, change):
        secret = form.cleaned_data.get("secret")
        if not change:
            stored = credential_store(kind=obj.kind, name=obj.name, secret=secret)
            # The admin goes on with `obj` (history entry, redirect): it must be the stored row.
            for field in Credential._meta.concrete_fields:
                setattr(obj, field.attname, getattr(stored, field.attname))
            obj._state.adding = False
            return
        if "name" in form.changed_data:
            credential_rename(credential=obj, name=obj.name)
        if secret:
            credential_replace_secret(credential=obj, secret=secret)

    def delete_model(self, request, obj):
        credential_delete(credential=obj)

    def delete_queryset(self, request, queryset):
        for credential in queryset:
            credential_delete(credential=credential)
