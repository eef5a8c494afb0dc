"""Writing and using credentials. The only code that seals or opens a ``Credential``.

Decrypted material exists only in memory (``credential_reveal``) or in a 0600 file inside a fresh 0700
directory (``credential_file``), for the length of one connection or run. Log lines name ids, names, kinds
and master key ids; never a secret, a data key or a ciphertext.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from slm_project.security import vault
from slm_project.security.choices import CredentialKind
from slm_project.security.models import Credential

logger = logging.getLogger(__name__)

SEALED_FIELDS = ("master_key_id", "wrapped_data_key", "key_nonce", "data_nonce", "ciphertext")
WRAP_FIELDS = ("master_key_id", "wrapped_data_key", "key_nonce", "rewrapped_at")
TEMP_DIRECTORY_PREFIX = "autobot-credential-"


def _secret_bytes(secret: str | bytes) -> bytes:
    data = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not data:
        raise ValidationError({"secret": ["The secret must not be empty."]})
    return data


def _copy_fields(*, source: Credential, target: Credential, fields: tuple[str, ...]) -> None:
    # Callers keep using the instance they passed in; it must match the row that was written.
    for field in fields:
        setattr(target, field, getattr(source, field))


def _lock(credential: Credential) -> Credential:
    """The current row of ``credential``, locked until the transaction ends (no-op on SQLite, whose
    IMMEDIATE transactions already hold the write lock)."""
    return Credential.objects.select_for_update().get(pk=credential.pk)


# --------------------------------------------------------------------------------------------------
# Writes


@transaction.atomic
def credential_store(
    *,
    kind: CredentialKind | str,
    name: str,
    secret: str | bytes,
    public_metadata: dict[str, Any] | None = None,
) -> Credential:
    """Seal ``secret`` under the active master key and store it as a new credential.

    ``public_metadata`` must be safe to show (e.g. an SSH public-key fingerprint); it is stored in clear.
    A ``str`` secret is stored as its UTF-8 bytes; ``credential_reveal`` returns bytes.
    """
    data = _secret_bytes(secret)
    credential = Credential(kind=kind, name=name, public_metadata=public_metadata)
    # The id is known before the insert, so the ciphertext is bound to it from the start.
    credential.set_sealed_value(vault.seal(data, context=credential.vault_context))
    # Field rules only: the table's check constraints hold the vault's sizes, which seal() guarantees.
    credential.full_clean(validate_constraints=False)
    credential.save(force_insert=True)
    logger.info(
        "credential stored id=%s name=%s kind=%s master_key_id=%s",
        credential.id,
        credential.name,
        credential.kind,
        credential.master_key_id,
    )
    return credential


@transaction.atomic
def credential_replace_secret(*, credential: Credential, secret: str | bytes) -> Credential:
    """Seal a new secret for ``credential``: a new data key under the active master key, a new ciphertext."""
    data = _secret_bytes(secret)
    _lock(credential)
    credential.set_sealed_value(vault.seal(data, context=credential.vault_context))
    credential.secret_changed_at = timezone.now()
    credential.rewrapped_at = None
    credential.save(update_fields=[*SEALED_FIELDS, "secret_changed_at", "rewrapped_at"])
    logger.info(
        "credential secret replaced id=%s name=%s master_key_id=%s",
        credential.id,
        credential.name,
        credential.master_key_id,
    )
    return credential


@transaction.atomic
def credential_rename(*, credential: Credential, name: str) -> Credential:
    credential.name = name
    credential.full_clean(exclude=list(SEALED_FIELDS), validate_constraints=False)
    credential.save(update_fields=["name"])
    logger.info("credential renamed id=%s name=%s", credential.id, credential.name)
    return credential


@transaction.atomic
def credential_delete(*, credential: Credential) -> None:
    credential_id, name = credential.id, credential.name
    credential.delete()
    logger.info("credential deleted id=%s name=%s", credential_id, name)


@transaction.atomic
def credential_rewrap(*, credential: Credential, key_id: str) -> Credential:
    """Wrap the data key of ``credential`` with master key ``key_id``; the ciphertext is not touched.

    Works on the current row under a row lock, so a concurrent ``credential_replace_secret`` can never be
    paired with a data key from before it. A credential already under ``key_id`` is left alone.
    """
    current = _lock(credential)
    if current.master_key_id != key_id:
        previous_key_id = current.master_key_id
        current.set_sealed_value(vault.rewrap(current.sealed_value, key_id=key_id))
        current.rewrapped_at = timezone.now()
        current.save(update_fields=list(WRAP_FIELDS))
        logger.info(
            "credential rewrapped id=%s name=%s from_master_key_id=%s to_master_key_id=%s",
            current.id,
            current.name,
            previous_key_id,
            key_id,
        )
    _copy_fields(source=current, target=credential, fields=(*SEALED_FIELDS, "rewrapped_at"))
    return credential


# --------------------------------------------------------------------------------------------------
# Using a secret


def credential_reveal(*, credential: Credential) -> bytes:
    """The decrypted secret of ``credential``.

    The caller keeps it in memory only, for one connection or run: never in a model field, a log line, an
    exception message, a command line, a Celery payload or an API response. Raises a
    ``vault.VaultError`` subclass when the stored parts do not open (altered, moved, unknown key id).
    """
    secret = vault.open_sealed(credential.sealed_value, context=credential.vault_context)
    logger.debug("credential revealed id=%s name=%s", credential.id, credential.name)
    return secret


@contextmanager
def credential_file(*, credential: Credential, filename: str = "secret") -> Iterator[Path]:
    """The secret of ``credential`` in a 0600 file inside a fresh 0700 directory, removed on exit.

    For tools that take a key file (ssh ``-i``, ansible's private key). Both the file and the directory
    are removed when the block ends, also when it raises. The directory is made under ``TMPDIR``: point
    it at a tmpfs where the secret should never reach a disk.
    """
    if not filename or os.path.basename(filename) != filename or filename in {".", ".."}:
        raise ValueError("filename must be a plain file name")
    secret = credential_reveal(credential=credential)
    # mkdtemp creates the directory 0700 with an unpredictable name; nobody else can enter it.
    directory = Path(tempfile.mkdtemp(prefix=TEMP_DIRECTORY_PREFIX))
    try:
        path = directory / filename
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(path, flags, 0o600), "wb") as handle:
            handle.write(secret)
        del secret
        logger.debug("credential file written id=%s directory=%s", credential.id, directory)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        logger.debug("credential file removed id=%s directory=%s", credential.id, directory)
