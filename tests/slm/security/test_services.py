"""Credentials through the services on the real database: storing, revealing, key files, and a canary
secret that must not surface in a database dump, the logs or the temp directory."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from slm_project.security import vault
from slm_project.security.choices import CredentialKind
from slm_project.security.models import Credential
from slm_project.security.services import (
    TEMP_DIRECTORY_PREFIX,
    credential_delete,
    credential_file,
    credential_rename,
    credential_replace_secret,
    credential_reveal,
    credential_rewrap,
    credential_store,
)
from tests.slm.secret_scan import assert_absent, canary, database_dump

SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture
def temp_root(tmp_path, monkeypatch) -> Path:
    """A private TMPDIR for this test, so its whole content can be inspected."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


# --------------------------------------------------------------------------------------------------
# Storing and revealing


@pytest.mark.django_db
def test_a_stored_secret_is_revealed_as_bytes():
    credential = credential_store(
        kind=CredentialKind.SSH_PRIVATE_KEY,
        name="deploy key",
        secret=SSH_KEY,
        public_metadata={"fingerprint": "SHA256:abc"},
    )

    stored = Credential.objects.get(pk=credential.pk)
    assert stored.master_key_id == "k1"
    assert stored.public_metadata == {"fingerprint": "SHA256:abc"}
    assert SSH_KEY.encode() not in bytes(stored.ciphertext)
    assert credential_reveal(credential=stored) == SSH_KEY.encode()
    assert str(stored) == "deploy key (SSH private key)"


@pytest.mark.django_db
def test_bytes_secrets_round_trip_exactly():
    secret = os.urandom(64)
    credential = credential_store(kind=CredentialKind.GENERIC, name="blob", secret=secret)

    assert credential_reveal(credential=Credential.objects.get(pk=credential.pk)) == secret


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"kind": CredentialKind.API_TOKEN, "name": "empty", "secret": ""}, "secret"),
        ({"kind": "certificate", "name": "unknown kind", "secret": "x"}, "kind"),
        ({"kind": CredentialKind.API_TOKEN, "name": "", "secret": "x"}, "name"),
    ],
)
def test_invalid_input_stores_nothing(arguments, field):
    with pytest.raises(ValidationError) as excinfo:
        credential_store(**arguments)

    assert field in excinfo.value.message_dict
    assert not Credential.objects.exists()


@pytest.mark.django_db
def test_a_ciphertext_moved_to_another_row_does_not_open():
    source = credential_store(kind=CredentialKind.SSH_PASSWORD, name="a", secret="password-of-a")
    target = credential_store(kind=CredentialKind.SSH_PASSWORD, name="b", secret="password-of-b")
    Credential.objects.filter(pk=target.pk).update(
        master_key_id=source.master_key_id,
        wrapped_data_key=source.wrapped_data_key,
        key_nonce=source.key_nonce,
        data_nonce=source.data_nonce,
        ciphertext=source.ciphertext,
    )

    with pytest.raises(vault.VaultIntegrityError) as excinfo:
        credential_reveal(credential=Credential.objects.get(pk=target.pk))
    assert f"credential:{target.pk}" in str(excinfo.value)
    assert "password-of-a" not in str(excinfo.value)


@pytest.mark.django_db
def test_a_ciphertext_altered_in_the_database_does_not_open():
    credential = credential_store(kind=CredentialKind.API_TOKEN, name="token", secret="t0ken")
    altered = bytes(credential.ciphertext)[:-1] + bytes([credential.ciphertext[-1] ^ 0x80])
    Credential.objects.filter(pk=credential.pk).update(ciphertext=altered)

    with pytest.raises(vault.VaultIntegrityError):
        credential_reveal(credential=Credential.objects.get(pk=credential.pk))


@pytest.mark.django_db
def test_a_row_whose_key_id_was_changed_names_the_missing_key():
    credential = credential_store(kind=CredentialKind.API_TOKEN, name="token", secret="t0ken")
    Credential.objects.filter(pk=credential.pk).update(master_key_id="k9")

    with pytest.raises(vault.UnknownMasterKeyError, match="'k9' is not configured in SLM_MASTER_KEYS"):
        credential_reveal(credential=Credential.objects.get(pk=credential.pk))


@pytest.mark.django_db
def test_replacing_a_secret_reseals_everything(master_keys):
    credential = credential_store(kind=CredentialKind.SSH_PASSWORD, name="root", secret="old-password")
    before = Credential.objects.get(pk=credential.pk)
    master_keys.configure("k1", "k2")

    credential_replace_secret(credential=credential, secret="new-password")

    after = Credential.objects.get(pk=credential.pk)
    assert credential_reveal(credential=after) == b"new-password"
    assert after.master_key_id == "k2"
    assert bytes(after.ciphertext) != bytes(before.ciphertext)
    assert bytes(after.data_nonce) != bytes(before.data_nonce)
    assert after.secret_changed_at > before.secret_changed_at
    assert (credential.master_key_id, bytes(credential.ciphertext)) == ("k2", bytes(after.ciphertext))


@pytest.mark.django_db
def test_rewrap_keeps_the_ciphertext(master_keys):
    credential = credential_store(kind=CredentialKind.SSH_PASSWORD, name="root", secret="password")
    master_keys.configure("k1", "k2")

    credential_rewrap(credential=credential, key_id="k2")

    after = Credential.objects.get(pk=credential.pk)
    assert after.master_key_id == credential.master_key_id == "k2"
    assert after.rewrapped_at is not None
    assert bytes(after.ciphertext) == bytes(credential.ciphertext)
    master_keys.configure("k2")
    assert credential_reveal(credential=after) == b"password"


@pytest.mark.django_db
def test_rewrap_reads_the_current_row_not_a_stale_instance(master_keys):
    stale = credential_store(kind=CredentialKind.SSH_PASSWORD, name="root", secret="first")
    credential_replace_secret(credential=Credential.objects.get(pk=stale.pk), secret="second")
    master_keys.configure("k1", "k2")

    credential_rewrap(credential=stale, key_id="k2")

    assert credential_reveal(credential=Credential.objects.get(pk=stale.pk)) == b"second"
    assert credential_reveal(credential=stale) == b"second"


@pytest.mark.django_db
def test_rename_and_delete():
    credential = credential_store(kind=CredentialKind.GENERIC, name="old", secret="x")

    credential_rename(credential=credential, name="new")
    assert Credential.objects.get(pk=credential.pk).name == "new"
    with pytest.raises(ValidationError):
        credential_rename(credential=credential, name="")

    credential_delete(credential=Credential.objects.get(pk=credential.pk))
    assert not Credential.objects.exists()


# --------------------------------------------------------------------------------------------------
# Key files


@pytest.mark.django_db
def test_credential_file_is_0600_in_a_0700_directory_and_removed_after(temp_root):
    credential = credential_store(kind=CredentialKind.SSH_PRIVATE_KEY, name="key", secret=SSH_KEY)

    with credential_file(credential=credential, filename="id_ed25519") as path:
        assert path.name == "id_ed25519"
        assert path.parent.parent == temp_root
        assert path.parent.name.startswith(TEMP_DIRECTORY_PREFIX)
        assert path.read_bytes() == SSH_KEY.encode()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert os.listdir(path.parent) == ["id_ed25519"]

    assert not path.exists()
    assert not path.parent.exists()
    assert list(temp_root.iterdir()) == []


@pytest.mark.django_db
def test_credential_file_is_removed_when_the_block_raises(temp_root):
    credential = credential_store(kind=CredentialKind.SSH_PRIVATE_KEY, name="key", secret=SSH_KEY)

    with (
        pytest.raises(RuntimeError, match="connection failed"),
        credential_file(credential=credential) as path,
    ):
        raise RuntimeError("connection failed")

    assert not path.parent.exists()
    assert list(temp_root.iterdir()) == []


@pytest.mark.django_db
@pytest.mark.parametrize("filename", ["", "../escape", "sub/key", ".."])
def test_credential_file_takes_plain_file_names_only(filename, temp_root):
    credential = credential_store(kind=CredentialKind.GENERIC, name="key", secret="x")

    with (
        pytest.raises(ValueError, match="plain file name"),
        credential_file(credential=credential, filename=filename),
    ):
        pass
    assert list(temp_root.iterdir()) == []


@pytest.mark.django_db
def test_credential_file_of_an_altered_credential_writes_nothing(temp_root):
    credential = credential_store(kind=CredentialKind.GENERIC, name="key", secret="x")
    Credential.objects.filter(pk=credential.pk).update(data_nonce=os.urandom(vault.NONCE_BYTES))

    with (
        pytest.raises(vault.VaultIntegrityError),
        credential_file(credential=Credential.objects.get(pk=credential.pk)),
    ):
        pass
    assert list(temp_root.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# The canary: a stored secret is nowhere but in memory while it is used


@pytest.mark.django_db(transaction=True)
def test_the_canary_is_not_in_a_database_dump(tmp_path):
    secret = canary()
    credential = credential_store(kind=CredentialKind.SSH_PASSWORD, name="canary", secret=secret)
    assert credential_reveal(credential=credential) == secret.encode()

    dump = database_dump(tmp_path)

    # The dump holds the row (or the scan proves nothing) ...
    ciphertext = bytes(Credential.objects.get(pk=credential.pk).ciphertext)
    assert ciphertext in dump or ciphertext.hex().encode() in dump
    # ... and nothing of the secret.
    assert_absent(secret, dump, "the database dump")


@pytest.mark.django_db
def test_the_canary_is_not_in_the_logs(caplog, temp_root):
    secret = canary()
    caplog.set_level(logging.DEBUG)

    credential = credential_store(kind=CredentialKind.SSH_PASSWORD, name="canary", secret=secret)
    credential_id = str(credential.id)
    credential_reveal(credential=credential)
    with credential_file(credential=credential):
        pass
    credential_replace_secret(credential=credential, secret=secret + "-2")
    credential_delete(credential=credential)

    logged = caplog.text + "".join(f"{record.args!r}{record.exc_text or ''}" for record in caplog.records)
    messages = [record.getMessage() for record in caplog.records]
    # The operations were logged, by id (or the scan would prove nothing).
    for operation in ("stored", "revealed", "file written", "file removed", "secret replaced", "deleted"):
        assert any(f"credential {operation} id={credential_id}" in message for message in messages), operation
    assert_absent(secret, logged.encode(), "the logs")


@pytest.mark.django_db
def test_the_canary_is_not_left_in_the_temp_directory(temp_root):
    secret = canary()
    credential = credential_store(kind=CredentialKind.SSH_PASSWORD, name="canary", secret=secret)

    with credential_file(credential=credential) as path:
        assert path.read_bytes() == secret.encode()
    with pytest.raises(RuntimeError), credential_file(credential=credential):
        raise RuntimeError("the run failed")

    # Every secret file of this test was made under temp_root; none is left, not even an empty directory.
    assert list(temp_root.rglob("*")) == []
