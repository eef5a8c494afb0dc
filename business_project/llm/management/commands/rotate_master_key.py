"""Re-wrap the business vault's data keys (LLM provider API keys) under the active master key, online.

Each sealed value has its own data key, wrapped by a master key named by its id (kid). This command
re-wraps the data key of every value not under the active kid (``BUSINESS_MASTER_KEY_ID``), one row
per short transaction; ciphertexts are not touched and no key is decrypted. Web processes and workers
keep running beside it; running it again resumes where it stopped.

    manage_business.py rotate_master_key                 re-wrap, printing counts per kid before and after
    manage_business.py rotate_master_key --check         counts per kid; fails if a kid in use is not
                                                         configured or a data key does not unwrap
    manage_business.py rotate_master_key --retire KID    fails while any value still uses KID

The procedure is the SLM's (``docs/OPERATIONS.md``) with the business variables
``BUSINESS_MASTER_KEYS`` / ``BUSINESS_MASTER_KEY_ID``: add the new key, make it active, restart, run
this, check, retire the old kid, remove it and restart. Without ``BUSINESS_MASTER_KEYS`` (``make run``)
the keyring is the file ``var/business/master_keys``.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from business_project.llm import vault
from business_project.llm.models import Provider
from business_project.llm.selectors import provider_count_by_master_key
from business_project.llm.services import provider_rewrap_api_key


class Command(BaseCommand):
    help = "Re-wrap every sealed provider API key under the active master key (online)."

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--check", action="store_true", help="Report values per key id; fail on problems.")
        mode.add_argument("--retire", metavar="KID", help="Confirm that no value uses KID any more.")

    def handle(self, *args, check: bool, retire: str | None, **options) -> None:
        try:
            keyring = vault.master_keyring()
        except vault.MasterKeyConfigurationError as exc:
            raise CommandError(str(exc)) from None
        if check:
            self._check(keyring)
        elif retire:
            self._retire(keyring, retire)
        else:
            self._rotate(keyring)

    def _write_counts(self, title: str, keyring: vault.MasterKeyring) -> dict[str, int]:
        counts = provider_count_by_master_key()
        self.stdout.write(title)
        if not counts:
            self.stdout.write("  no stored values")
        for key_id, count in counts.items():
            note = (
                "active"
                if key_id == keyring.active_key_id
                else "configured"
                if key_id in keyring
                else "NOT CONFIGURED"
            )
            self.stdout.write(f"  {key_id}: {count} ({note})")
        return counts

    def _sealed(self):
        return Provider.objects.exclude(api_key_master_key_id="").order_by("name")

    def _rotate(self, keyring: vault.MasterKeyring) -> None:
        active = keyring.active_key_id
        self._write_counts("Values per master key before:", keyring)
        done, failures = 0, {}
        for provider in self._sealed().exclude(api_key_master_key_id=active):
            try:
                provider_rewrap_api_key(provider=provider, key_id=active)
            except vault.VaultError as exc:
                failures[provider.name] = str(exc)
            else:
                done += 1
        self.stdout.write(
            f"Re-wrapped {done} values to {active}." if done else f"Nothing to re-wrap under {active}."
        )
        self._write_counts("Values per master key after:", keyring)
        if failures:
            for name, reason in failures.items():
                self.stderr.write(f"  {name}: {reason}")
            raise CommandError(f"{len(failures)} values were not re-wrapped; fix the cause and run again")
        self.stdout.write(self.style.SUCCESS(f"Every value is under master key {active}."))

    def _check(self, keyring: vault.MasterKeyring) -> None:
        counts = self._write_counts("Values per master key:", keyring)
        problems = []
        unknown = [key_id for key_id in counts if key_id not in keyring]
        if unknown:
            problems.append(
                f"values use master key ids that are not configured in {vault.MASTER_KEYS_VARIABLE}: "
                + ", ".join(unknown)
            )
        broken = []
        # Unwrapping proves each configured id still names the key that wrapped it; no value is decrypted.
        for provider in self._sealed().filter(api_key_master_key_id__in=keyring.key_ids):
            try:
                vault.verify_wrapped_key(provider.sealed_api_key, keyring=keyring)
            except vault.VaultError:
                broken.append(provider.name)
        if broken:
            problems.append(
                f"{len(broken)} data keys do not unwrap under their master key: {', '.join(broken)}"
            )
        pending = sum(count for key_id, count in counts.items() if key_id != keyring.active_key_id)
        if pending:
            self.stdout.write(f"{pending} values are not under the active key {keyring.active_key_id} yet.")
        if problems:
            raise CommandError("; ".join(problems))
        self.stdout.write(self.style.SUCCESS("Every value opens with the configured master keys."))

    def _retire(self, keyring: vault.MasterKeyring, key_id: str) -> None:
        if key_id == keyring.active_key_id:
            raise CommandError(
                f"{key_id} is the active master key ({vault.MASTER_KEY_ID_VARIABLE}); "
                "make another key active and run rotate_master_key first"
            )
        remaining = self._sealed().filter(api_key_master_key_id=key_id).count()
        if remaining:
            raise CommandError(
                f"{remaining} values still use master key {key_id}; run rotate_master_key first"
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"No value uses master key {key_id}: remove it from {vault.MASTER_KEYS_VARIABLE} "
                "and restart. Keep it offline while backups from before the rotation are kept."
            )
        )
