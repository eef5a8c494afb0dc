"""The sign-in form of the web app and the admin, with login throttling (``services`` section)."""

from __future__ import annotations

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from business_project.accounts import services


def client_address(request) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is set by whoever sends the request, so trusting it would let an
    # attacker pick a fresh address per guess. Behind a proxy, the proxy must set REMOTE_ADDR (uvicorn's
    # --proxy-headers with --forwarded-allow-ips does).
    return (request.META.get("REMOTE_ADDR") if request is not None else "") or "unknown"


class ThrottledAuthenticationMixin:
    def clean(self):
        username = self.data.get("username", "") or ""
        address = client_address(self.request)
        try:
            services.login_throttle_check(username=username, address=address)
        except services.LoginLocked as locked:
            raise forms.ValidationError(locked.message(), code="throttled") from None
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            services.login_failure_record(username=username, address=address)
            raise
        services.login_success_record(username=username, address=address)
        return cleaned


class LoginForm(ThrottledAuthenticationMixin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledAuthenticationMixin, AdminAuthenticationForm):
    pass
