"""Who may open ``/ws/chat/``: sessions from our own origin, API tokens (header or subprotocol) from
anywhere, nobody else — and a refused caller learns why from the close code."""

import asyncio
from datetime import timedelta

import pytest
import websockets
from django.utils import timezone

from business_project.accounts.models import ApiToken
from business_project.accounts.websocket import websocket_auth_stack
from tests.business.chat.factories import make_token, make_user, session_cookie
from tests.business.chat.wire import open_chat

pytestmark = pytest.mark.django_db(transaction=True)


def closed_with(server, **kwargs):
    async def scenario():
        chat = await open_chat(server, **kwargs)
        try:
            await asyncio.wait_for(chat.socket.recv(), 5)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code
        raise AssertionError("the socket stayed open")

    return asyncio.run(scenario())


def opens(server, **kwargs):
    async def scenario():
        chat = await open_chat(server, **kwargs)
        subprotocol = chat.socket.subprotocol
        await chat.send({"type": "resume", "message_id": "00000000-0000-0000-0000-000000000000"})
        event = await chat.event()
        await chat.close()
        return subprotocol, event

    return asyncio.run(scenario())


def test_anonymous_sockets_are_closed_with_4401(asgi_server):
    assert closed_with(asgi_server) == 4401


def test_a_session_from_our_origin_opens(asgi_server):
    cookie = session_cookie(make_user("sam"))
    subprotocol, event = opens(asgi_server, cookie=cookie)
    assert subprotocol == "autobot.chat.v1"
    assert event["code"] == "not_found"  # authenticated: the frame was handled


@pytest.mark.parametrize("origin", ["https://evil.example", None])
def test_a_session_from_another_or_no_origin_is_refused(asgi_server, origin):
    cookie = session_cookie(make_user("sam"))
    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(open_chat(asgi_server, cookie=cookie, origin=origin))
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("send_as", ["header", "subprotocol"])
def test_a_token_opens_from_anywhere(asgi_server, send_as):
    token = make_token(make_user("tom"), "chat:read")
    subprotocol, event = opens(asgi_server, token=token, send_as=send_as, origin=None)
    assert subprotocol == "autobot.chat.v1"  # never the token protocol
    assert event["code"] == "not_found"
    assert ApiToken.objects.get().last_used_at is not None


def test_a_bad_token_never_falls_back_to_the_session(asgi_server):
    user = make_user("sue")
    assert closed_with(asgi_server, cookie=session_cookie(user), token="abt_0123456789abcdef_forged") == 4401


@pytest.mark.parametrize(
    "change", [{"revoked_at": timezone.now()}, {"expires_at": timezone.now() - timedelta(1)}]
)
def test_revoked_and_expired_tokens_are_closed_with_4401(asgi_server, change):
    token = make_token(make_user("ray"), "chat:read")
    ApiToken.objects.update(**change)
    assert closed_with(asgi_server, token=token, origin=None) == 4401


def test_a_token_that_may_not_read_is_closed_with_4403(asgi_server):
    token = make_token(make_user("wes"), "chat:write")
    assert closed_with(asgi_server, token=token, origin=None) == 4403


def test_a_read_only_token_cannot_send(asgi_server):
    token = make_token(make_user("rob"), "chat:read")

    async def scenario():
        chat = await open_chat(asgi_server, token=token, origin=None)
        await chat.send({"type": "send", "content": "hi"})
        event = await chat.event()
        await chat.close()
        return event

    assert asyncio.run(scenario())["code"] == "permission_denied"


def test_a_session_socket_sends_through_the_servers_own_send():
    # Channels' session middleware wraps send to save sessions when an HTTP response starts; a websocket
    # never starts one, and every frame of an answer paid for the wrapper (a frame per token).
    user = make_user("sam")
    seen = {}

    async def inner(scope, receive, send):
        seen["user"], seen["send"] = scope["user"], send

    async def server_send(message):
        raise AssertionError("nothing is sent")

    async def receive():
        return {"type": "websocket.connect"}

    scope = {
        "type": "websocket",
        "path": "/ws/chat/",
        "headers": [
            (b"host", b"testserver"),
            (b"origin", b"http://testserver"),
            (b"cookie", session_cookie(user).encode()),
        ],
        "subprotocols": [],
    }
    asyncio.run(websocket_auth_stack(inner)(scope, receive, server_send))

    assert seen["send"] is server_send
    assert seen["user"].pk == user.pk
