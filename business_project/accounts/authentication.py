"""DRF authentication with personal API tokens, and the scope permission every API view uses.

People use the API with their session (the web app's fetch calls); scripts and other clients send
``Authorization: Bearer abt_…``. Either way the caller holds the scopes of ``selectors.scopes_of``.
"""

from __future__ import annotations

from rest_framework import authentication, exceptions, permissions

from business_project.accounts.constants import API_TOKEN_PREFIX
from business_project.accounts.selectors import scopes_of
from business_project.accounts.services import TokenRejected, api_token_authenticate
from service_kit.auth import bearer_token


class ApiTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        token = bearer_token(request)
        if token is None or not token.startswith(API_TOKEN_PREFIX):
            return None
        try:
            return api_token_authenticate(raw_token=token)
        except TokenRejected as exc:
            raise exceptions.AuthenticationFailed(exc.detail) from None

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="autobot"'


# Token first: a request carrying a token is judged by it, never by a session cookie riding along.
AUTHENTICATION_CLASSES = [ApiTokenAuthentication, authentication.SessionAuthentication]


class HasScope(permissions.BasePermission):
    """Views declare ``required_scopes = {"GET": "chat:read", "POST": "chat:write", …}``.

    A method a view does not list is refused: an endpoint that forgets its scope is closed, not open.
    """

    message = "You lack the permission this request needs."

    def has_permission(self, request, view) -> bool:
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        required = getattr(view, "required_scopes", {}).get(method)
        if required is None:
            return False
        return required in scopes_of(user=request.user, token=request.auth)
