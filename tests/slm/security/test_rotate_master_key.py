"""``manage_slm.py rotate_master_key``: re-wrapping online, checking, and retiring an old master key."""

from __future__ import annotations

import io
import threading
import time

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from slm_project.security.choices import CredentialKind
from slm_project.security.models import Credential
from slm_project.security.services import credential_reveal, credential_store

SECRETS = {f"node-{number}": f"password-{number}" for number in range(5)}


def run(*arguments: str) -> str:
    out = io.StringIO()
    call_command("rotate_master_key", *arguments, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def store_all() -> dict[str, bytes]:
    """Store SECRETS; returns each credential's ciphertext by id."""
    credentials = [
        credential_store(kind=CredentialKind.SSH_PASSWORD, name=name, secret=secret)
        for name, secret in SECRETS.items()
    ]
    return {str(credential.pk): bytes(credential.ciphertext) for credential in credentials}


def assert_all_open() -> None:
    for credential in Credential.objects.all():
        assert credential_reveal(credential=credential) == SECRETS[credential.name].encode()


@pytest.mark.django_db
def test_rotation_moves_every_value_to_the_active_key_and_the_old_key_can_go(master_keys):
    ciphertexts = store_all()
    master_keys.configure("k1", "k2", active="k2")
    with pytest.raises(CommandError, match="5 values still use master key k1"):
        run("--retire", "k1")

    output = run("--batch-size", "2")

    assert "Values per master key before:\n  k1: 5 (configured)" in output
    assert "Re-wrapped 5 values from k1 to k2." in output
    assert "Values per master key after:\n  k2: 5 (active)" in output
    rows = list(Credential.objects.all())
    assert {row.master_key_id for row in rows} == {"k2"}
    assert all(row.rewrapped_at is not None for row in rows)
    assert {str(row.pk): bytes(row.ciphertext) for row in rows} == ciphertexts  # only the keys moved
    assert_all_open()

    # The old key leaves the environment: everything still opens, the check and the retirement pass.
    master_keys.configure("k2")
    assert_all_open()
    assert "k2: 5 (active)" in run("--check")
    assert "No value uses master key k1" in run("--retire", "k1")


@pytest.mark.django_db(transaction=True)
def test_rotation_runs_beside_a_transaction_that_holds_a_row(master_keys):
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("row locks need PostgreSQL (CI runs it); SQLite locks the whole database")
    store_all()
    master_keys.configure("k1", "k2")
    locked, saw_others_rewrapped = threading.Event(), threading.Event()

    def worker_holding_node_0() -> None:
        # Like a worker replacing node-0's secret: the row stays locked until the others are done.
        try:
            with transaction.atomic():
                Credential.objects.select_for_update().get(name="node-0")
                locked.set()
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    if Credential.objects.filter(master_key_id="k2").count() == len(SECRETS) - 1:
                        saw_others_rewrapped.set()
                        break
                    time.sleep(0.05)
        finally:
            connection.close()

    worker = threading.Thread(target=worker_holding_node_0)
    worker.start()
    assert locked.wait(10)
    output = run()
    worker.join()

    # The command did not wait for the lock: it committed the other rows first, then came back for it.
    assert saw_others_rewrapped.is_set()
    assert "Re-wrapped 5 values from k1 to k2." in output
    assert set(Credential.objects.values_list("master_key_id", flat=True)) == {"k2"}


@pytest.mark.django_db
def test_rotation_is_idempotent(master_keys):
    store_all()
    master_keys.configure("k1", "k2")
    run()

    assert "Nothing to re-wrap: every value was under k2 already." in run()


@pytest.mark.django_db
def test_check_fails_while_values_use_a_key_that_is_not_configured(master_keys):
    store_all()
    master_keys.configure("k2")

    with pytest.raises(CommandError, match="not configured in SLM_MASTER_KEYS \\(or MASTER_KEYS\\): k1"):
        run("--check")


@pytest.mark.django_db
def test_check_reports_values_not_yet_rotated_without_failing(master_keys):
    store_all()
    master_keys.configure("k1", "k2")

    output = run("--check")

    assert "k1: 5 (configured)" in output
    assert "5 values are not under the active key k2 yet." in output


@pytest.mark.django_db
def test_check_fails_when_a_key_id_names_different_key_material(master_keys, settings):
    store_all()
    # An operator pasted a new key under the old id: nothing would open, and the check says so.
    settings.VAULT_MASTER_KEYS = master_keys.entry("k2").replace("k2:", "k1:")

    with pytest.raises(CommandError, match="5 data keys do not unwrap under their master key"):
        run("--check")


@pytest.mark.django_db
def test_rotation_reports_values_it_cannot_open_and_rewraps_the_rest(master_keys):
    store_all()
    stray = credential_store(kind=CredentialKind.GENERIC, name="stray", secret="x")
    Credential.objects.filter(pk=stray.pk).update(master_key_id="k0")
    master_keys.configure("k1", "k2")

    with pytest.raises(CommandError, match="1 values were not re-wrapped"):
        run()

    assert Credential.objects.filter(master_key_id="k2").count() == len(SECRETS)
    assert Credential.objects.get(pk=stray.pk).master_key_id == "k0"


@pytest.mark.django_db
def test_the_active_key_cannot_be_retired(master_keys):
    master_keys.configure("k1", "k2")

    with pytest.raises(CommandError, match="k2 is the active master key"):
        run("--retire", "k2")


@pytest.mark.django_db
def test_malformed_master_keys_stop_the_command(settings):
    settings.VAULT_MASTER_KEYS = "k1:too-short"

    with pytest.raises(CommandError, match="SLM_MASTER_KEYS \\(or MASTER_KEYS\\)") as excinfo:
        run("--check")
    assert "too-short" not in str(excinfo.value)
