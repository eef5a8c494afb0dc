"""Envelope encryption for secrets at rest (the credential vault).

Every value gets its own random 256-bit data key. The value is encrypted with AES-GCM under that data key,
with associated data naming the value's owner (its *context*, e.g. ``credential:<uuid>``), so a ciphertext
copied to another owner does not open. The data key is itself AES-GCM-wrapped by a *master key*, with the
master key's id (kid) as associated data. Master keys live in the environment only
(``SLM_MASTER_KEYS (or MASTER_KEYS)``, ``kid:base64key,…``), never in the database, so a database dump alone
reveals nothing. Rotating a master key re-wraps the small data keys; the ciphertexts stay as they are.

The mechanism is ``service_kit.envelope`` (the business app uses it too); this module is the SLM's vault:
its settings (``VAULT_MASTER_KEYS``, ``VAULT_MASTER_KEY_ID``, ``VAULT_MASTER_KEYS_FILE``), the variable
names its messages quote, and the functions the rest of the SLM calls. It is a plain module (no models),
usable from both the models and the services of the app. Nothing here logs, and no error message carries
key material or plaintext: messages name ids, contexts and variables.
"""

from __future__ import annotations

from pathlib import Path

from service_kit import envelope
from service_kit.envelope import (
    KEY_BYTES,
    KEY_ID_MAX_LENGTH,
    KEY_ID_PATTERN,
    NONCE_BYTES,
    TAG_BYTES,
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
    "KEY_BYTES",
    "KEY_ID_MAX_LENGTH",
    "KEY_ID_PATTERN",
    "MASTER_KEYS_VARIABLE",
    "MASTER_KEY_ID_VARIABLE",
    "NONCE_BYTES",
    "TAG_BYTES",
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
    "parse_master_keys",
    "persistent_master_keys",
    "reset_master_keyring",
    "rewrap",
    "seal",
    "verify_wrapped_key",
]

MASTER_KEYS_VARIABLE = "SLM_MASTER_KEYS (or MASTER_KEYS)"
MASTER_KEY_ID_VARIABLE = "SLM_MASTER_KEY_ID (or MASTER_KEY_ID)"

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


def parse_master_keys(value: str, *, source: str = MASTER_KEYS_VARIABLE) -> dict[str, bytes]:
    """``kid:base64key`` entries separated by commas (or new lines) → keys by id, in the listed order."""
    return envelope.parse_master_keys(value, source=source)


def persistent_master_keys(path: Path) -> str:
    """The local keyring file's content, made once per installation (``make run`` without MASTER_KEYS)."""
    return _vault.persistent_master_keys(path)
