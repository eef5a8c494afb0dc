"""The business vault (``service_kit.envelope`` with the business settings): provider API keys sealed at
rest, bound to their provider, rotated online with ``manage_business.py rotate_master_key``."""

from __future__ import annotations

import dataclasses
import stat
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from business_project.llm import chain, vault
from business_project.llm.checks import master_keys_check
from business_project.llm.events import InvalidLlmRequest
from business_project.llm.models import Provider
from business_project.llm.services import provider_clear_api_key, provider_save, provider_set_api_key
from tests.slm.secret_scan import assert_absent, canary, database_dump

pytestmark = pytest.mark.django_db


def new_provider(name: str = "p", **fields) -> Provider:
    return Provider(name=name, base_url="http://127.0.0.1:9", **fields)


def config_of(provider: Provider) -> chain.ProviderConfig:
    return chain.provider_config(Provider.objects.get(pk=provider.pk))


@pytest.mark.django_db(transaction=True)  # the dump reads the committed database
def test_a_key_is_stored_sealed_and_opens_for_its_provider(tmp_path):
    secret = canary()

    provider = provider_save(provider=new_provider(), api_key=secret)

    stored = Provider.objects.get(pk=provider.pk)
    assert stored.has_api_key
    assert stored.api_key_master_key_id == "k1"
    assert_absent(secret, bytes(stored.api_key_ciphertext), "the ciphertext column")
    assert_absent(secret, database_dump(tmp_path), "a dump of the database")
    assert config_of(provider).api_key == secret
    assert secret not in repr(config_of(provider))


def test_a_key_copied_to_another_provider_does_not_open():
    source = provider_save(provider=new_provider("source"), api_key=canary())
    target = provider_save(provider=new_provider("target"))
    target.set_sealed_api_key(Provider.objects.get(pk=source.pk).sealed_api_key)
    target.save()

    config = config_of(target)

    assert config.api_key is None
    assert config.unusable == "its API key does not open (vault_integrity_error)"


def test_replacing_and_clearing_a_key():
    first, second = canary(), canary()
    provider = provider_save(provider=new_provider(), api_key=first)
    old = Provider.objects.get(pk=provider.pk).sealed_api_key

    provider_set_api_key(provider=provider, api_key=f"  {second}\n")
    assert config_of(provider).api_key == second  # stripped
    assert Provider.objects.get(pk=provider.pk).sealed_api_key.ciphertext != old.ciphertext

    provider_clear_api_key(provider=provider)
    stored = Provider.objects.get(pk=provider.pk)
    assert not stored.has_api_key
    assert stored.api_key_master_key_id == ""
    assert stored.api_key_wrapped_data_key is None
    assert config_of(provider).api_key is None


@pytest.mark.parametrize("api_key", ["", "   ", "two words", "x" * 5000])
def test_a_malformed_key_is_refused_without_quoting_it_and_nothing_is_written(api_key):
    with pytest.raises(InvalidLlmRequest) as excinfo:
        provider_save(provider=new_provider(), api_key=api_key)
    if api_key.strip():
        assert api_key.strip() not in str(excinfo.value.detail)
    assert not Provider.objects.exists()


def test_rotation_rewraps_keys_online_and_the_old_key_can_be_retired(master_keys):
    secret = canary()
    provider = provider_save(provider=new_provider(), api_key=secret)
    before = Provider.objects.get(pk=provider.pk).sealed_api_key
    master_keys.configure("k1", "k2", active="k2")

    with pytest.raises(CommandError, match="1 values still use master key k1"):
        call_command("rotate_master_key", "--retire", "k1")
    out = StringIO()
    call_command("rotate_master_key", stdout=out)

    after = Provider.objects.get(pk=provider.pk).sealed_api_key
    assert after.master_key_id == "k2"
    assert after.ciphertext == before.ciphertext  # only the data key was re-wrapped
    assert after.wrapped_data_key != before.wrapped_data_key
    assert "Re-wrapped 1 values to k2." in out.getvalue()
    assert secret not in out.getvalue()
    call_command("rotate_master_key", "--check", stdout=StringIO())
    call_command("rotate_master_key", "--retire", "k1", stdout=StringIO())
    master_keys.configure("k2")  # k1 removed from the environment
    assert config_of(provider).api_key == secret


def test_the_check_fails_when_a_key_id_in_use_is_not_configured(master_keys):
    provider_save(provider=new_provider(), api_key=canary())
    master_keys.configure("k2")

    with pytest.raises(CommandError, match="not configured in BUSINESS_MASTER_KEYS"):
        call_command("rotate_master_key", "--check", stdout=StringIO())
    with pytest.raises(CommandError, match="1 values were not re-wrapped"):
        call_command("rotate_master_key", stdout=StringIO(), stderr=StringIO())


def test_the_same_key_id_with_other_key_material_is_reported_by_the_check(master_keys, settings):
    provider_save(provider=new_provider(), api_key=canary())
    settings.VAULT_MASTER_KEYS = vault.generate_master_key_entry("k1")

    with pytest.raises(CommandError, match="1 data keys do not unwrap under their master key: p"):
        call_command("rotate_master_key", "--check", stdout=StringIO())


def test_errors_name_the_business_variables_not_the_key(master_keys):
    sealed = vault.seal(b"value", context="ctx")
    master_keys.configure("k2")

    with pytest.raises(vault.UnknownMasterKeyError) as excinfo:
        vault.open_sealed(sealed, context="ctx")
    assert "'k1' is not configured in BUSINESS_MASTER_KEYS (or MASTER_KEYS)" in str(excinfo.value)
    with pytest.raises(vault.VaultIntegrityError):
        vault.open_sealed(dataclasses.replace(sealed, master_key_id="k2"), context="ctx")


def test_without_master_keys_a_key_file_is_made_once(settings, tmp_path):
    path = tmp_path / "business" / "master_keys"
    settings.VAULT_MASTER_KEYS = ""
    settings.VAULT_MASTER_KEYS_FILE = path

    provider = provider_save(provider=new_provider(), api_key="sk-local")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [key_id] = vault.master_keyring().key_ids
    assert key_id.startswith("local-")
    vault.reset_master_keyring()
    assert config_of(provider).api_key == "sk-local"


def test_the_system_check_reports_bad_master_keys_without_the_key(settings):
    settings.VAULT_MASTER_KEYS = "k1:c2hvcnQta2V5LTE2Ynl0ZQ=="

    [error] = master_keys_check(None)

    assert error.id == "llm.E001"
    assert "BUSINESS_MASTER_KEYS (or MASTER_KEYS)" in error.msg
    assert "c2hvcnQta2V5LTE2Ynl0ZQ" not in error.msg


def test_the_system_check_passes_with_good_keys():
    assert master_keys_check(None) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"base_url": ""}, "Set a base URL, or let the SLM discover it."),
        ({"first_token_timeout": 0}, "Timeouts must be more than 0 seconds."),
        ({"kind": "grpc"}, "is not a valid choice"),
        ({"default_params": ["x"]}, "Must be a JSON object."),
    ],
)
def test_an_invalid_provider_is_refused_with_a_message_and_not_stored(fields, message):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match=message):
        provider_save(
            provider=Provider(**({"name": "p", "base_url": "http://127.0.0.1:9"} | fields)), api_key="sk-x"
        )
    assert not Provider.objects.exists()


def test_a_discovered_provider_needs_no_url_and_a_second_default_takes_the_flag():
    first = provider_save(provider=Provider(name="first", base_url="http://127.0.0.1:9", is_default=True))
    second = provider_save(provider=Provider(name="fleet", discover=True, is_default=True))

    assert list(Provider.objects.filter(is_default=True)) == [second]
    first.refresh_from_db()
    assert not first.is_default
