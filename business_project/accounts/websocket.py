"""Who is on the other end of a websocket, for every consumer of the business app.

A websocket client authenticates with its session cookie (the web app) or a personal API token, sent as
``Authorization: Bearer abt_…`` or — for browsers, which cannot set headers on a websocket — as the
subprotocol ``autobot.token.<token>`` next to the application protocol it speaks. A handshake that
carries a token is judged by that token alone: a session cookie riding along is ignored, so an invalid
token never falls back to the browser's session.

The stack sets ``scope["user"]`` (``AnonymousUser`` when unauthenticated), ``scope["auth_scopes"]``
(what the caller may do, ``selectors.scopes_of``) and ``scope["auth_error"]`` (why a token was refused,
for the close reason). Consumers decide how to refuse anonymous callers (the chat closes with 4401).
"""

from __future__ import annotations

import functools

from channels.auth import AuthMiddleware
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import AllowedHostsOriginValidator
from channels.sessions import CookieMiddleware, InstanceSessionWrapper, SessionMiddleware
from django.contrib.auth.models import AnonymousUser

from business_project.accounts.selectors import scopes_of
from business_project.accounts.services import TokenRejected, api_token_authenticate

TOKEN_SUBPROTOCOL_PREFIX = "autobot.token."  # noqa: S105 - a marker of where a token is, not a secret


def websocket_token(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    for subprotocol in scope.get("subprotocols", ()):
        if subprotocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return subprotocol[len(TOKEN_SUBPROTOCOL_PREFIX) :]
    return None


# In the loop's thread pool, not asgiref's one thread: a burst of connections authenticates side by side.
@functools.partial(database_sync_to_async, thread_sensitive=False)
def _authenticate(token: str):
    try:
        user, row = api_token_authenticate(raw_token=token)
    except TokenRejected as exc:
        return AnonymousUser(), frozenset(), str(exc.detail)
    return user, scopes_of(user=user, token=row), None


class TokenAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        token = websocket_token(scope)
        # The token leaves the scope here: nothing after this point can echo or log it.
        subprotocols = [
            p for p in scope.get("subprotocols", ()) if not p.startswith(TOKEN_SUBPROTOCOL_PREFIX)
        ]
        if token is None:
            user = scope.get("user") or AnonymousUser()
            scope = dict(scope, auth_scopes=scopes_of(user=user), auth_error=None, subprotocols=subprotocols)
        else:
            user, scopes, error = await _authenticate(token)
            scope = dict(scope, user=user, auth_scopes=scopes, auth_error=error, subprotocols=subprotocols)
        return await super().__call__(scope, receive, send)


class OriginOrTokenValidator:
    """Browsers send cookies with a websocket handshake opened by any page, so a session socket must come
    from one of our hosts (``AllowedHostsOriginValidator``; a missing Origin is refused too). A handshake
    carrying a token is authenticated by the token alone, so it may come from any origin or none
    (command-line clients send no Origin)."""

    def __init__(self, application):
        self.application = application
        self.validated = AllowedHostsOriginValidator(application)

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "websocket" and websocket_token(scope) is not None:
            return await self.application(scope, receive, send)
        return await self.validated(scope, receive, send)


class WebsocketSessionMiddleware(SessionMiddleware):
    """Channels' ``SessionMiddleware`` for websockets: it puts the session in the scope the same way but
    hands the consumer the server's own ``send``. Channels wraps ``send`` to save a modified session when
    an HTTP response starts, which a websocket never sends; the wrapper only cost every frame a look at
    the session (a chat answer is a frame per token). A consumer that changes the session saves it
    itself, as it had to before."""

    async def __call__(self, scope, receive, send):
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


def websocket_auth_stack(application):
    session_auth = CookieMiddleware(
        WebsocketSessionMiddleware(AuthMiddleware(TokenAuthMiddleware(application)))
    )
    return OriginOrTokenValidator(session_auth)
