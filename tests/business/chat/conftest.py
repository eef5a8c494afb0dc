import time

import pytest

from business_project.chat import hotpath, realtime
from tests.business.chat.factories import make_user, session_cookie


@pytest.fixture(autouse=True)
def _release_server_database_connections():
    """Websocket consumers and generations use the database from asgiref's one shared worker thread and
    from the event loop's own connections (chat/hotpath.py); none may outlive a test (PostgreSQL cannot
    flush or drop a database that is in use)."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
    hotpath.close_connections()


@pytest.fixture
def alice(transactional_db):
    return make_user("alice")


@pytest.fixture
def bob(transactional_db):
    return make_user("bob")


@pytest.fixture
def alice_cookie(alice) -> str:
    return session_cookie(alice)


@pytest.fixture
def provider(scripted_llm, transactional_db):
    """The scripted LLM server, registered as the default provider."""
    scripted_llm.register_provider(name="scripted", is_default=True)
    return scripted_llm


@pytest.fixture
def asgi_server(asgi_server):
    """The ASGI test server; at the end of a test every generation still running in it is stopped and
    awaited, so none writes after the test's database is gone."""
    yield asgi_server
    for generation in list(realtime._running.values()):
        generation.loop.call_soon_threadsafe(generation.stop.set)
    deadline = time.monotonic() + 10
    while realtime.running_here() and time.monotonic() < deadline:
        time.sleep(0.02)
