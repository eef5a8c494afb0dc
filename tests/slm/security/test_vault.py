"""Envelope encryption: sealing, opening, tampering, and the master keyring from settings or its file."""

from __future__ import annotations

import base64
import dataclasses
import os
import stat

import pytest

from slm_project.security import vault
from slm_project.security.checks import master_keys_check

CONTEXT = "credential:00000000-0000-0000-0000-000000000001"
PLAINTEXT = b"correct horse battery staple\n"


def flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def assert_reveals_nothing(message: str, *secrets: bytes | str) -> None:
    for secret in secrets:
        text = secret.decode(errors="replace") if isinstance(secret, bytes) else secret
        assert text not in message
        raw = secret if isinstance(secret, bytes) else secret.encode()
        assert base64.b64encode(raw).decode() not in message
        assert raw.hex() not in message


# --------------------------------------------------------------------------------------------------
# Sealing and opening


def test_a_sealed_value_opens_with_its_context():
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)

    assert sealed.master_key_id == "k1"
    assert PLAINTEXT not in sealed.ciphertext
    assert len(sealed.wrapped_data_key) == vault.WRAPPED_KEY_BYTES
    assert len(sealed.key_nonce) == len(sealed.data_nonce) == vault.NONCE_BYTES
    assert vault.open_sealed(sealed, context=CONTEXT) == PLAINTEXT


def test_two_seals_of_one_value_share_nothing():
    first = vault.seal(PLAINTEXT, context=CONTEXT)
    second = vault.seal(PLAINTEXT, context=CONTEXT)

    assert first.ciphertext != second.ciphertext
    assert first.wrapped_data_key != second.wrapped_data_key
    assert first.data_nonce != second.data_nonce
    assert first.key_nonce != second.key_nonce


@pytest.mark.parametrize("part", ["ciphertext", "data_nonce", "wrapped_data_key", "key_nonce"])
def test_an_altered_part_does_not_open(part):
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)
    altered = dataclasses.replace(sealed, **{part: flip_last_bit(getattr(sealed, part))})

    with pytest.raises(vault.VaultIntegrityError) as excinfo:
        vault.open_sealed(altered, context=CONTEXT)
    assert_reveals_nothing(str(excinfo.value), PLAINTEXT)


@pytest.mark.parametrize("part", ["ciphertext", "data_nonce", "wrapped_data_key", "key_nonce"])
def test_a_truncated_part_does_not_open(part):
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)
    altered = dataclasses.replace(sealed, **{part: getattr(sealed, part)[:-1]})

    with pytest.raises(vault.VaultIntegrityError):
        vault.open_sealed(altered, context=CONTEXT)


def test_another_context_does_not_open():
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)

    with pytest.raises(vault.VaultIntegrityError, match="another owner") as excinfo:
        vault.open_sealed(sealed, context="credential:00000000-0000-0000-0000-000000000002")
    assert_reveals_nothing(str(excinfo.value), PLAINTEXT)


def test_a_relabelled_key_id_does_not_open(master_keys):
    master_keys.configure("k1", "k2", active="k1")
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)

    # k2 is configured, but the data key was wrapped by k1 with "k1" as associated data.
    with pytest.raises(vault.VaultIntegrityError, match="'k2'"):
        vault.open_sealed(dataclasses.replace(sealed, master_key_id="k2"), context=CONTEXT)


def test_a_missing_key_id_is_named_with_the_variable(master_keys):
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)
    master_keys.configure("k2")

    with pytest.raises(vault.UnknownMasterKeyError) as excinfo:
        vault.open_sealed(sealed, context=CONTEXT)
    message = str(excinfo.value)
    assert "'k1' is not configured in SLM_MASTER_KEYS (or MASTER_KEYS)" in message
    assert "configured: k2" in message
    assert_reveals_nothing(message, master_keys.key_material("k2"), PLAINTEXT)


def test_the_same_key_id_with_other_key_material_does_not_open(master_keys, settings):
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)
    settings.VAULT_MASTER_KEYS = vault.generate_master_key_entry("k1")

    with pytest.raises(vault.VaultIntegrityError, match="different key"):
        vault.open_sealed(sealed, context=CONTEXT)


def test_rewrap_changes_the_wrapping_only(master_keys):
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)
    master_keys.configure("k1", "k2")

    rewrapped = vault.rewrap(sealed, key_id="k2")

    assert rewrapped.master_key_id == "k2"
    assert rewrapped.ciphertext == sealed.ciphertext
    assert rewrapped.data_nonce == sealed.data_nonce
    assert rewrapped.wrapped_data_key != sealed.wrapped_data_key
    master_keys.configure("k2")
    assert vault.open_sealed(rewrapped, context=CONTEXT) == PLAINTEXT


def test_new_values_use_the_active_key(master_keys):
    master_keys.configure("k1", "k2", "k3", active="k2")
    assert vault.seal(PLAINTEXT, context=CONTEXT).master_key_id == "k2"
    master_keys.configure("k1", "k2", "k3")
    assert vault.seal(PLAINTEXT, context=CONTEXT).master_key_id == "k3"  # default: the last listed


def test_reprs_show_no_key_material(master_keys):
    keyring = vault.master_keyring()
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)

    assert repr(keyring) == "MasterKeyring(key_ids=['k1'], active_key_id='k1')"
    assert master_keys.key_material("k1") not in repr(keyring)
    assert sealed.ciphertext.hex() not in repr(sealed)
    assert repr(sealed.ciphertext) not in repr(sealed)


def test_the_keyring_is_cached_until_the_settings_change(master_keys):
    keyring = vault.master_keyring()
    assert vault.master_keyring() is keyring

    master_keys.configure("k1", "k2")

    rebuilt = vault.master_keyring()
    assert rebuilt is not keyring
    assert rebuilt.key_ids == ("k1", "k2")


def test_vault_errors_are_service_errors_with_codes():
    from service_kit.errors import ServiceError

    assert issubclass(vault.VaultError, ServiceError)
    assert vault.VaultIntegrityError().get_codes() == "vault_integrity_error"
    assert vault.UnknownMasterKeyError().get_codes() == "vault_master_key_unknown"


# --------------------------------------------------------------------------------------------------
# Parsing MASTER_KEYS


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_master_keys_parse_in_order_with_spaces_and_both_alphabets():
    key_one, key_two = os.urandom(32), os.urandom(32)
    value = f" k1:{b64(key_one)} ,\n k2:{base64.urlsafe_b64encode(key_two).decode()},"

    assert vault.parse_master_keys(value) == {"k1": key_one, "k2": key_two}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("k1:" + b64(b"s3cr3t-short-key"), "key 'k1' must decode to 32 bytes, not 16"),
        ("k1:" + b64(os.urandom(33)), "key 'k1' must decode to 32 bytes, not 33"),
        ("k1:" + b64(os.urandom(32))[:-2] + "*!", "key 'k1' is not valid base64"),
        ("k1:" + b64(os.urandom(32)) + ",k1:" + b64(os.urandom(32)), "key id 'k1' is listed more than once"),
        (b64(os.urandom(32)), "entry 1 is not of the form kid:base64key"),
        ("k1:" + b64(os.urandom(32)) + ",k2:", "entry 2 is not of the form kid:base64key"),
        ("bad kid!:" + b64(os.urandom(32)), "the key id of entry 1 must be"),
        (" , ", "holds no key"),
    ],
)
def test_malformed_master_keys_are_refused_naming_the_variable(settings, value, expected):
    settings.VAULT_MASTER_KEYS = value

    with pytest.raises(vault.MasterKeyConfigurationError) as excinfo:
        vault.master_keyring()

    message = str(excinfo.value)
    assert message.startswith("SLM_MASTER_KEYS (or MASTER_KEYS)")
    assert expected in message
    for entry in value.split(","):
        material = entry.partition(":")[2].strip() or entry.strip()
        if len(material) > 8:
            assert material not in message
            assert material[:8] not in message


def test_an_active_key_id_that_is_not_listed_is_refused(master_keys):
    master_keys.configure("k1", "k2", active="k3")

    with pytest.raises(vault.MasterKeyConfigurationError) as excinfo:
        vault.master_keyring()
    message = str(excinfo.value)
    assert "SLM_MASTER_KEY_ID (or MASTER_KEY_ID) is 'k3'" in message
    assert "configured: k1, k2" in message
    assert_reveals_nothing(message, master_keys.key_material("k1"), master_keys.key_material("k2"))


def test_the_system_check_reports_bad_master_keys_without_the_key(settings):
    short_key = b64(b"0123456789abcdef")
    settings.VAULT_MASTER_KEYS = f"k1:{short_key}"

    [error] = master_keys_check(None)

    assert error.id == "security.E001"
    assert "SLM_MASTER_KEYS (or MASTER_KEYS)" in error.msg
    assert short_key not in error.msg


def test_the_system_check_passes_with_good_master_keys():
    assert master_keys_check(None) == []


# --------------------------------------------------------------------------------------------------
# The local key file (no MASTER_KEYS)


def test_without_master_keys_a_key_file_is_made_once_with_mode_0600(settings, tmp_path):
    path = tmp_path / "var" / "master_keys"
    settings.VAULT_MASTER_KEYS = ""
    settings.VAULT_MASTER_KEYS_FILE = path

    keyring = vault.master_keyring()
    sealed = vault.seal(PLAINTEXT, context=CONTEXT)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [key_id] = keyring.key_ids
    assert key_id.startswith("local-")
    assert path.read_text().startswith(f"{key_id}:")
    assert not list(path.parent.glob("*.tmp"))
    # Another process (a rebuilt keyring) reads the same file instead of making a new key.
    content = path.read_text()
    vault.reset_master_keyring()
    assert vault.master_keyring().key_ids == (key_id,)
    assert path.read_text() == content
    assert vault.open_sealed(sealed, context=CONTEXT) == PLAINTEXT


def test_a_key_file_readable_by_others_is_refused(settings, tmp_path):
    path = tmp_path / "master_keys"
    path.write_text(vault.generate_master_key_entry("local-1"))
    path.chmod(0o644)
    settings.VAULT_MASTER_KEYS = ""
    settings.VAULT_MASTER_KEYS_FILE = path

    with pytest.raises(vault.MasterKeyConfigurationError, match="chmod 600"):
        vault.master_keyring()


def test_a_malformed_key_file_is_named_without_its_content(settings, tmp_path):
    path = tmp_path / "master_keys"
    path.write_text("local-1:" + b64(b"sixteen byte key"))
    path.chmod(0o600)
    settings.VAULT_MASTER_KEYS = ""
    settings.VAULT_MASTER_KEYS_FILE = path

    with pytest.raises(vault.MasterKeyConfigurationError) as excinfo:
        vault.master_keyring()
    message = str(excinfo.value)
    assert str(path) in message
    assert "SLM_MASTER_KEYS (or MASTER_KEYS) is not set" in message
    assert b64(b"sixteen byte key") not in message
