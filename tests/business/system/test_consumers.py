"""``/ws/healthz/`` over a real socket: uvicorn, the business ASGI app, its channel layer (Redis in CI)."""

import asyncio
import json

import pytest
import websockets
from django.conf import settings


def probe(url: str, origin: str | None):
    async def run():
        async with websockets.connect(url, origin=origin, open_timeout=5) as socket:
            message = json.loads(await asyncio.wait_for(socket.recv(), 5))
            await asyncio.wait_for(socket.wait_closed(), 5)
            return message, socket.close_code

    return asyncio.run(run())


@pytest.mark.django_db(transaction=True)
def test_the_websocket_probe_round_trips_through_the_channel_layer(asgi_server):
    message, close_code = probe(f"{asgi_server.ws_url}/ws/healthz/", origin=asgi_server.http_url)
    assert message == {"status": "ok", "channel_layer": "ok"}
    assert close_code == 1000


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("origin", ["https://evil.example", None])
def test_a_foreign_or_missing_origin_is_refused(asgi_server, origin):
    with pytest.raises(websockets.InvalidStatus) as excinfo:
        probe(f"{asgi_server.ws_url}/ws/healthz/", origin=origin)
    assert excinfo.value.response.status_code == 403


def test_an_unknown_websocket_route_is_refused(asgi_server):
    with pytest.raises((websockets.InvalidStatus, websockets.ConnectionClosed)):
        probe(f"{asgi_server.ws_url}/ws/nope/", origin=asgi_server.http_url)


def test_ci_uses_the_redis_channel_layer():
    from tests.fixtures.services import in_ci

    if not in_ci():
        pytest.skip("outside CI the in-memory channel layer is allowed")
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels_redis.core.RedisChannelLayer"
