"""``/ws/healthz/``: liveness of the websocket path, through the channel layer.

A load balancer or an operator opens it to learn that websockets reach this ASGI process and that the
channel layer (Redis in production) carries messages: the consumer sends a message through a fresh
channel, reports whether it came back, and closes.
"""

import asyncio
import uuid

from channels.generic.websocket import AsyncJsonWebsocketConsumer

ROUND_TRIP_TIMEOUT_SECONDS = 2.0


class HealthConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.accept()
        await self.send_json(await self._channel_layer_round_trip())
        await self.close()

    async def _channel_layer_round_trip(self) -> dict[str, str]:
        probe = uuid.uuid4().hex
        try:
            channel = await self.channel_layer.new_channel()
            await self.channel_layer.send(channel, {"type": "health.probe", "probe": probe})
            message = await asyncio.wait_for(self.channel_layer.receive(channel), ROUND_TRIP_TIMEOUT_SECONDS)
        except TimeoutError:
            return {"status": "degraded", "channel_layer": "timeout"}
        except Exception as exc:  # a probe reports failures instead of dropping the socket
            return {"status": "degraded", "channel_layer": exc.__class__.__name__}
        if message.get("probe") != probe:
            return {"status": "degraded", "channel_layer": "wrong_message"}
        return {"status": "ok", "channel_layer": "ok"}
