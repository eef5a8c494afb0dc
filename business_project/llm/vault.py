"""The business app's vault: envelope encryption (``service_kit.envelope``) for the secrets it stores —
today the API keys of LLM providers.

Master keys come from ``BUSINESS_MASTER_KEYS (or MASTER_KEYS)`` (``kid:base64key,…``), never from the
database; without them (``make run``) from a key file made once under the business var dir. The settings
are ``VAULT_MASTER_KEYS``, ``VAULT_MASTER_KEY_ID`` and ``VAULT_MASTER_KEYS_FILE``
(``config/settings/integrations/vault.py``). Rotation: ``manage_business.py rotate_master_key``.

A plain module (no models), used by the models and services of the app. Nothing here logs, and no error
message carries key material or plaintext.
"""

from __future__ import annotations

from service_kit import envelope
from service_kit.envelope import (
    KEY_ID_MAX_LENGTH,
    NONCE_BYTES,
    WRAPPED_KEY_BYTES,
    MasterKeyConfigurationError,
    MasterKeyring,
    SealedValue,
    UnknownMasterKeyError,
    VaultError,
    VaultIntegrityError,
    generate_master_key_entry,
)

__all__ = [
    "KEY_ID_MAX_LENGTH",
    "MASTER_KEYS_VARIABLE",
    "MASTER_KEY_ID_VARIABLE",
    "NONCE_BYTES",
    "WRAPPED_KEY_BYTES",
    "MasterKeyConfigurationError",
    "MasterKeyring",
    "SealedValue",
    "UnknownMasterKeyError",
    "VaultError",
    "VaultIntegrityError",
    "build_master_keyring",
    "generate_master_key_entry",
    "master_keyring",
    "open_sealed",
    "reset_master_keyring",
    "rewrap",
    "seal",
    "verify_wrapped_key",
]

MASTER_KEYS_VARIABLE = "BUSINESS_MASTER_KEYS (or MASTER_KEYS)"
MASTER_KEY_ID_VARIABLE = "BUSINESS_MASTER_KEY_ID (or MASTER_KEY_ID)"

_vault = envelope.EnvelopeVault(
    keys_variable=MASTER_KEYS_VARIABLE, key_id_variable=MASTER_KEY_ID_VARIABLE, setting_prefix="VAULT_"
)

build_master_keyring = _vault.build_master_keyring
master_keyring = _vault.master_keyring
reset_master_keyring = _vault.reset_master_keyring
seal = _vault.seal
open_sealed = _vault.open_sealed
rewrap = _vault.rewrap
verify_wrapped_key = _vault.verify_wrapped_key
