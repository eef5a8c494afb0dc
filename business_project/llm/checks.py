"""Start-up check: the business master keys parse, so a bad ``MASTER_KEYS`` stops ``migrate``/``check``
before the first provider key fails to open."""

from django.core import checks

from business_project.llm import vault


@checks.register(checks.Tags.security)
def master_keys_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    try:
        vault.build_master_keyring()
    except vault.MasterKeyConfigurationError as exc:
        return [checks.Error(str(exc), id="llm.E001")]
    return []
