"""Every test here runs on master keys from settings (never the installation's key file)."""

from __future__ import annotations

import pytest

from slm_project.security import vault


class MasterKeys:
    """Configures ``VAULT_MASTER_KEYS``; each kid keeps its key material across configurations."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.entries: dict[str, str] = {}

    def entry(self, key_id: str) -> str:
        if key_id not in self.entries:
            self.entries[key_id] = vault.generate_master_key_entry(key_id)
        return self.entries[key_id]

    def key_material(self, key_id: str) -> str:
        return self.entry(key_id).partition(":")[2]

    def configure(self, *key_ids: str, active: str = "") -> None:
        self.settings.VAULT_MASTER_KEYS = ",".join(self.entry(key_id) for key_id in key_ids)
        self.settings.VAULT_MASTER_KEY_ID = active


@pytest.fixture(autouse=True)
def master_keys(settings) -> MasterKeys:
    keys = MasterKeys(settings)
    keys.configure("k1")
    return keys
