"""Envelope encryption for secrets at rest, shared by both deployables.

Every value gets its own random 256-bit data key. The value is encrypted with AES-GCM under that data key,
with associated data naming the value's owner (its *context*, e.g. ``credential:<uuid>``), so a ciphertext
copied to another owner does not open. The data key is itself AES-GCM-wrapped by a *master key*, with the
master key's id (kid) as associated data. Master keys live in the environment only (``kid:base64key,…``),
never in the database, so a database dump alone reveals nothing. Rotating a master key re-wraps the small
data keys; the ciphertexts stay as they are.

Each project makes one ``EnvelopeVault`` naming its settings and environment variables (the SLM's
credential vault, ``slm_project.security.vault``; the business app's, ``business_project.llm.vault``).
The settings it reads are ``<prefix>MASTER_KEYS`` (the keys, may be empty), ``<prefix>MASTER_KEY_ID``
(the active id, empty: the last key listed) and ``<prefix>MASTER_KEYS_FILE`` (the key file made once
per installation when no keys are configured, for the single-machine ``make run``).

Nothing here logs, and no error message carries key material or plaintext: messages name ids, contexts
and variables.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from rest_framework import status

from service_kit.env import persistent_secret_file
from service_kit.errors import ServiceError

KEY_BYTES = 32  # AES-256, for master keys and data keys alike
NONCE_BYTES = 12  # the AES-GCM standard nonce; random nonces are safe at one use per data key
TAG_BYTES = 16
WRAPPED_KEY_BYTES = KEY_BYTES + TAG_BYTES
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEY_ID_MAX_LENGTH = 64
DEFAULT_KEYS_VARIABLE = "MASTER_KEYS"

# Domain separation: a wrapped data key can never be taken for a value's ciphertext or the reverse,
# and a later format can change these without old ciphertexts opening as the new format. Both
# deployables use the same format; their master keys differ.
_DATA_AAD_PREFIX = b"autobot-vault/v1/data\x00"
_WRAP_AAD_PREFIX = b"autobot-vault/v1/wrap\x00"


# --------------------------------------------------------------------------------------------------
# Errors


class VaultError(ServiceError):
    """A value could not be sealed or opened. Messages name ids and variables, never secret bytes."""

    status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
    default_code = "vault_error"
    default_detail = "The credential vault failed."


class MasterKeyConfigurationError(VaultError, ImproperlyConfigured):
    """The master keys (environment or key file) are missing or malformed."""

    default_code = "vault_master_keys_invalid"


class UnknownMasterKeyError(VaultError):
    """A value is wrapped by a master key id that is not configured (removed too early, or a typo)."""

    default_code = "vault_master_key_unknown"


class VaultIntegrityError(VaultError):
    """Authentication failed: the stored parts were altered, moved to another owner, or wrapped by a
    different key under the same id."""

    default_code = "vault_integrity_error"


# --------------------------------------------------------------------------------------------------
# The master keyring


class MasterKeyring:
    """The configured master keys by id, and the id that wraps new data keys.

    ``repr`` shows ids only, so a keyring in a traceback or a debugger never prints key material.
    ``keys_variable`` names where the keys come from in error messages.
    """

    def __init__(
        self, keys: Mapping[str, bytes], *, active_key_id: str, keys_variable: str = DEFAULT_KEYS_VARIABLE
    ) -> None:
        if active_key_id not in keys:
            raise MasterKeyConfigurationError(f"master key {active_key_id!r} is not in the keyring")
        self._keys = MappingProxyType(dict(keys))
        self.active_key_id = active_key_id
        self.keys_variable = keys_variable

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def key(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            configured = ", ".join(self._keys) or "none"
            raise UnknownMasterKeyError(
                f"master key {key_id!r} is not configured in {self.keys_variable} "
                f"(configured: {configured}); add it back until rotate_master_key has re-wrapped its values"
            ) from None

    def __repr__(self) -> str:
        return f"MasterKeyring(key_ids={list(self._keys)!r}, active_key_id={self.active_key_id!r})"


def _decode_key(encoded: str, *, key_id: str, source: str) -> bytes:
    # Both base64 alphabets are accepted: `openssl rand -base64 32` and Python's urlsafe output alike.
    normalized = encoded.replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyConfigurationError(f"{source}: key {key_id!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyConfigurationError(
            f"{source}: key {key_id!r} must decode to {KEY_BYTES} bytes, not {len(key)} "
            "(make one with: openssl rand -base64 32)"
        )
    return key


def parse_master_keys(value: str, *, source: str = DEFAULT_KEYS_VARIABLE) -> dict[str, bytes]:
    """``kid:base64key`` entries separated by commas (or new lines) → keys by id, in the listed order.

    ``source`` names where the value came from in error messages; the messages quote key ids and entry
    positions, never an entry itself (a malformed entry may be a bare key).
    """
    keys: dict[str, bytes] = {}
    entries = [entry.strip() for entry in re.split(r"[,\n]", value)]
    for position, entry in enumerate((entry for entry in entries if entry), start=1):
        key_id, separator, encoded = entry.partition(":")
        key_id, encoded = key_id.strip(), encoded.strip()
        if not separator or not key_id or not encoded:
            raise MasterKeyConfigurationError(f"{source}: entry {position} is not of the form kid:base64key")
        if not KEY_ID_PATTERN.match(key_id):
            # An id that fails the pattern may be key material pasted in the wrong place: not quoted.
            raise MasterKeyConfigurationError(
                f"{source}: the key id of entry {position} must be 1-{KEY_ID_MAX_LENGTH} letters, digits, "
                "'.', '_' or '-'"
            )
        if key_id in keys:
            raise MasterKeyConfigurationError(f"{source}: key id {key_id!r} is listed more than once")
        keys[key_id] = _decode_key(encoded, key_id=key_id, source=source)
    if not keys:
        raise MasterKeyConfigurationError(f"{source} holds no key (expected kid:base64key[,kid:base64key…])")
    return keys


def generate_master_key_entry(key_id: str) -> str:
    """A new ``kid:base64key`` entry, for ``MASTER_KEYS`` or the local key file."""
    if not KEY_ID_PATTERN.match(key_id):
        raise MasterKeyConfigurationError(f"{key_id!r} is not a valid master key id")
    return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=KEY_BYTES * 8)).decode()}"


def persistent_master_keys(path: Path, *, keys_variable: str = DEFAULT_KEYS_VARIABLE) -> str:
    """The local keyring file's content, made once per installation (see ``persistent_secret_file``).

    Used only when ``MASTER_KEYS`` is not set (the single-machine ``make run``); production settings
    require the variable.
    """
    try:
        return persistent_secret_file(
            path, lambda: generate_master_key_entry(f"local-{secrets.token_hex(4)}") + "\n"
        )
    except ImproperlyConfigured as exc:
        raise MasterKeyConfigurationError(
            f"the master key file: {exc} (used because {keys_variable} is not set)"
        ) from None


# --------------------------------------------------------------------------------------------------
# Sealing and opening with an explicit keyring


@dataclass(frozen=True, repr=False)
class SealedValue:
    """The stored parts of one sealed value; none of them is secret without the master key."""

    master_key_id: str
    wrapped_data_key: bytes
    key_nonce: bytes
    data_nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"SealedValue(master_key_id={self.master_key_id!r}, ciphertext_bytes={len(self.ciphertext)})"


def _data_aad(context: str) -> bytes:
    if not context:
        raise VaultError("a sealed value needs a context naming its owner")
    return _DATA_AAD_PREFIX + context.encode()


def _wrap_aad(key_id: str) -> bytes:
    return _WRAP_AAD_PREFIX + key_id.encode()


def _wrap_data_key(data_key: bytes, *, key_id: str, keyring: MasterKeyring) -> tuple[bytes, bytes]:
    key_nonce = os.urandom(NONCE_BYTES)
    wrapped = AESGCM(keyring.key(key_id)).encrypt(key_nonce, data_key, _wrap_aad(key_id))
    return wrapped, key_nonce


def _unwrap_data_key(sealed: SealedValue, *, keyring: MasterKeyring) -> bytes:
    master_key = keyring.key(sealed.master_key_id)
    if len(sealed.key_nonce) != NONCE_BYTES or len(sealed.wrapped_data_key) != WRAPPED_KEY_BYTES:
        raise VaultIntegrityError("the wrapped data key or its nonce has the wrong length (altered)")
    try:
        return AESGCM(master_key).decrypt(
            sealed.key_nonce, sealed.wrapped_data_key, _wrap_aad(sealed.master_key_id)
        )
    except InvalidTag:
        raise VaultIntegrityError(
            f"the data key does not unwrap under master key {sealed.master_key_id!r}: the wrapped key, "
            "its nonce or its key id was altered, or this id now names a different key"
        ) from None


def seal_with(plaintext: bytes, *, context: str, keyring: MasterKeyring) -> SealedValue:
    """Encrypt ``plaintext`` under a fresh data key bound to ``context``, wrapped by the active master key."""
    aad = _data_aad(context)
    data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    data_nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(data_nonce, plaintext, aad)
    wrapped, key_nonce = _wrap_data_key(data_key, key_id=keyring.active_key_id, keyring=keyring)
    return SealedValue(
        master_key_id=keyring.active_key_id,
        wrapped_data_key=wrapped,
        key_nonce=key_nonce,
        data_nonce=data_nonce,
        ciphertext=ciphertext,
    )


def open_with(sealed: SealedValue, *, context: str, keyring: MasterKeyring) -> bytes:
    """The plaintext of ``sealed``; raises a ``VaultError`` subclass if any part or the context differs."""
    aad = _data_aad(context)
    data_key = _unwrap_data_key(sealed, keyring=keyring)
    if len(sealed.data_nonce) != NONCE_BYTES:
        raise VaultIntegrityError(f"the nonce of the value for {context!r} has the wrong length (altered)")
    try:
        return AESGCM(data_key).decrypt(sealed.data_nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise VaultIntegrityError(
            f"the value does not decrypt for {context!r}: its ciphertext or nonce was altered, or it "
            "belongs to another owner"
        ) from None


def rewrap_with(sealed: SealedValue, *, key_id: str, keyring: MasterKeyring) -> SealedValue:
    """``sealed`` with its data key wrapped by master key ``key_id``; the ciphertext is unchanged."""
    data_key = _unwrap_data_key(sealed, keyring=keyring)
    wrapped, key_nonce = _wrap_data_key(data_key, key_id=key_id, keyring=keyring)
    return SealedValue(
        master_key_id=key_id,
        wrapped_data_key=wrapped,
        key_nonce=key_nonce,
        data_nonce=sealed.data_nonce,
        ciphertext=sealed.ciphertext,
    )


def verify_with(sealed: SealedValue, *, keyring: MasterKeyring) -> None:
    """Raises unless the data key of ``sealed`` unwraps (the value itself is not decrypted)."""
    _unwrap_data_key(sealed, keyring=keyring)


# --------------------------------------------------------------------------------------------------
# One deployable's vault: the keyring its settings describe, cached per process


class EnvelopeVault:
    """The master keyring of one deployable, built from its settings on first use and kept.

    ``keys_variable`` / ``key_id_variable`` name the environment variables in messages (e.g.
    ``"SLM_MASTER_KEYS (or MASTER_KEYS)"``); ``setting_prefix`` names the settings read
    (``VAULT_`` → ``VAULT_MASTER_KEYS``, ``VAULT_MASTER_KEY_ID``, ``VAULT_MASTER_KEYS_FILE``). A change
    of one of those settings (tests) drops the cached keyring.
    """

    def __init__(self, *, keys_variable: str, key_id_variable: str, setting_prefix: str = "VAULT_") -> None:
        self.keys_variable = keys_variable
        self.key_id_variable = key_id_variable
        self.keys_setting = f"{setting_prefix}MASTER_KEYS"
        self.key_id_setting = f"{setting_prefix}MASTER_KEY_ID"
        self.keys_file_setting = f"{setting_prefix}MASTER_KEYS_FILE"
        self._setting_prefix = f"{setting_prefix}MASTER_KEY"
        self._keyring: MasterKeyring | None = None
        self._lock = threading.Lock()
        setting_changed.connect(self._on_setting_changed, weak=False)

    def __repr__(self) -> str:
        return f"EnvelopeVault(keys_variable={self.keys_variable!r})"

    def parse_master_keys(self, value: str, *, source: str | None = None) -> dict[str, bytes]:
        return parse_master_keys(value, source=source or self.keys_variable)

    def persistent_master_keys(self, path: Path) -> str:
        return persistent_master_keys(path, keys_variable=self.keys_variable)

    def build_master_keyring(self) -> MasterKeyring:
        """The keyring the settings describe: the keys setting, else the key file; the active id setting,
        else the last key listed."""
        configured = getattr(settings, self.keys_setting).strip()
        if configured:
            keys = parse_master_keys(configured, source=self.keys_variable)
        else:
            path = Path(getattr(settings, self.keys_file_setting))
            keys = parse_master_keys(
                self.persistent_master_keys(path),
                source=f"the master key file {path} (used because {self.keys_variable} is not set)",
            )
        active_key_id = getattr(settings, self.key_id_setting).strip() or list(keys)[-1]
        if active_key_id not in keys:
            raise MasterKeyConfigurationError(
                f"{self.key_id_variable} is {active_key_id!r}, which is not a key id of "
                f"{self.keys_variable} (configured: {', '.join(keys)})"
            )
        return MasterKeyring(keys, active_key_id=active_key_id, keys_variable=self.keys_variable)

    def master_keyring(self) -> MasterKeyring:
        """The process's keyring, built on first use and kept (the environment does not change under a
        running process); ``reset_master_keyring`` drops it."""
        keyring = self._keyring
        if keyring is None:
            with self._lock:
                if self._keyring is None:
                    self._keyring = self.build_master_keyring()
                keyring = self._keyring
        return keyring

    def reset_master_keyring(self) -> None:
        with self._lock:
            self._keyring = None

    def _on_setting_changed(self, *, setting: str, **kwargs) -> None:
        # Tests (override_settings, pytest-django's `settings`) change the keys within one process.
        if setting.startswith(self._setting_prefix):
            self.reset_master_keyring()

    def seal(self, plaintext: bytes, *, context: str, keyring: MasterKeyring | None = None) -> SealedValue:
        return seal_with(plaintext, context=context, keyring=keyring or self.master_keyring())

    def open_sealed(
        self, sealed: SealedValue, *, context: str, keyring: MasterKeyring | None = None
    ) -> bytes:
        return open_with(sealed, context=context, keyring=keyring or self.master_keyring())

    def rewrap(
        self, sealed: SealedValue, *, key_id: str, keyring: MasterKeyring | None = None
    ) -> SealedValue:
        return rewrap_with(sealed, key_id=key_id, keyring=keyring or self.master_keyring())

    def verify_wrapped_key(self, sealed: SealedValue, *, keyring: MasterKeyring | None = None) -> None:
        verify_with(sealed, keyring=keyring or self.master_keyring())
