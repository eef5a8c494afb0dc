"""The business ASGI application: Django for HTTP, Channels for websockets (``/ws/…``)."""

import gc
import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "business_project.config.settings.base")

# Django must be set up before anything imports models (consumers, auth middleware).
django_asgi_app = get_asgi_application()

from django.conf import settings  # noqa: E402

# Some database work runs in threads beside the event loop (on SQLite all of the chat's; on PostgreSQL
# what is not on chat/hotpath.py's async connections: regenerations, reads of frames). A thread coming
# back from a query waits for the interpreter lock until the loop thread lets go of it, up to the switch
# interval (5 ms by default) each time: with a busy loop a ten-query admission in a thread waited ~40 ms
# for the lock alone (bench/chat_stream.py). A shorter interval hands it over sooner.
sys.setswitchinterval(settings.ASGI_SWITCH_INTERVAL_SECONDS)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from business_project.accounts.websocket import websocket_auth_stack  # noqa: E402
from business_project.config.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Session or API token (accounts/websocket.py). Browsers send Origin on websockets: a socket
        # authenticated by its session cookie must come from our hosts, which stops cross-site hijacking.
        "websocket": websocket_auth_stack(URLRouter(websocket_urlpatterns)),
    }
)

# What is loaded by now (Django, the apps, their modules) lives as long as the process: out of the
# collector's sight, a collection walks only what the requests and streams make (a full collection
# walked all of it, a pause of the event loop that every token in flight waited for).
gc.freeze()
