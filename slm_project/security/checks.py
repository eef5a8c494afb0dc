"""Start-up check: the vault's master keys parse, so a bad ``MASTER_KEYS`` stops ``migrate``/``check``
before the first secret fails to open."""

from django.core import checks

from slm_project.security import vault


@checks.register(checks.Tags.security)
def master_keys_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    try:
        vault.build_master_keyring()
    except vault.MasterKeyConfigurationError as exc:
        return [checks.Error(str(exc), id="security.E001")]
    return []
