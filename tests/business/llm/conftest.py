"""The LLM app's tests: master keys from settings (never the installation's key file), a fresh provider
chain snapshot for every test, and ``run`` to drive async code from a test with its database."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from asgiref.sync import async_to_sync

from business_project.llm import chain, clients, vault

T = TypeVar("T")


class MasterKeys:
    """Configures ``VAULT_MASTER_KEYS``; each kid keeps its key material across configurations."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.entries: dict[str, str] = {}

    def entry(self, key_id: str) -> str:
        if key_id not in self.entries:
            self.entries[key_id] = vault.generate_master_key_entry(key_id)
        return self.entries[key_id]

    def configure(self, *key_ids: str, active: str = "") -> None:
        self.settings.VAULT_MASTER_KEYS = ",".join(self.entry(key_id) for key_id in key_ids)
        self.settings.VAULT_MASTER_KEY_ID = active


@pytest.fixture(autouse=True)
def master_keys(settings) -> MasterKeys:
    keys = MasterKeys(settings)
    keys.configure("k1")
    return keys


@pytest.fixture(autouse=True)
def _fresh_chain():
    chain.invalidate_chain()
    yield
    chain.invalidate_chain()


def run(function: Callable[[], Awaitable[T]]) -> T:
    """Run ``function()`` on an event loop of its own; ORM calls inside (``sync_to_async``) come back to
    this thread, so they see the test's transaction. The loop's HTTP client is closed after."""

    async def main() -> T:
        try:
            return await function()
        finally:
            await clients.close_http_client()

    return async_to_sync(main)()


@pytest.fixture
def llm_logs(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog
