"""Re-wrap the credential vault's data keys under the active master key, online.

Each stored secret has its own data key, wrapped by a master key named by its id (kid). This command
re-wraps the data keys of every value not under the active kid (``MASTER_KEY_ID``); ciphertexts are not
touched and no secret is decrypted. It works in short transactions over batches of rows locked with
``SKIP LOCKED``, so web processes and workers keep running beside it; a row busy elsewhere is retried,
and running the command again resumes where it stopped.

    manage_slm.py rotate_master_key                 re-wrap, printing counts per kid before and after
    manage_slm.py rotate_master_key --check         counts per kid; fails if a kid in use is not configured
                                                    or a data key does not unwrap under its configured key
    manage_slm.py rotate_master_key --retire KID    fails while any value still uses KID

Rotation procedure (variables: ``SLM_MASTER_KEYS (or MASTER_KEYS)``, ``SLM_MASTER_KEY_ID (or
MASTER_KEY_ID)``):

1. Make a new key: ``openssl rand -base64 32``, and pick a new kid (e.g. ``k2`` after ``k1``; never reuse
   an id for a different key).
2. Add it to ``MASTER_KEYS``, keeping the old one: ``k1:<old>,k2:<new>``, and set ``MASTER_KEY_ID=k2``.
   Restart every SLM process (web, workers, beat). From now on new secrets are sealed under ``k2``;
   old ones still open under ``k1``. (With rolling restarts across several hosts, first roll out
   ``MASTER_KEYS`` with ``k2`` added and ``MASTER_KEY_ID`` unchanged, then switch ``MASTER_KEY_ID``,
   so no process meets a value under a key it does not have yet.)
3. Run ``manage_slm.py rotate_master_key``. It prints how many values each kid protected before and
   after, and exits non-zero if any value could not be re-wrapped (run it again after fixing the cause).
4. Run ``manage_slm.py rotate_master_key --check`` (all values under ``k2``, exit 0) and
   ``manage_slm.py rotate_master_key --retire k1`` (refuses while any value still uses ``k1``).
5. Remove ``k1`` from ``MASTER_KEYS`` and restart. Keep ``k1`` in offline escrow as long as database
   backups taken before step 3 are kept: their data keys are still wrapped by it.

Without ``MASTER_KEYS`` (``make run``) the keyring is the file ``var/slm/master_keys``; to rotate there,
copy its ``kid:key`` entry into ``MASTER_KEYS`` and continue from step 2.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from slm_project.security import vault
from slm_project.security.models import Credential
from slm_project.security.selectors import credential_count_by_master_key
from slm_project.security.services import credential_rewrap

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100
# Rows locked by another transaction (a secret being replaced) are retried this often, a second apart.
LOCKED_ROW_ATTEMPTS = 10


class Command(BaseCommand):
    help = "Re-wrap every credential's data key under the active master key (online, in batches)."

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--check",
            action="store_true",
            help="Report how many values each key id protects; fail if one in use is not configured.",
        )
        mode.add_argument(
            "--retire", metavar="KID", help="Confirm that no value uses KID any more (fails otherwise)."
        )
        parser.add_argument(
            "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="Rows per transaction."
        )

    def handle(self, *args, check: bool, retire: str | None, batch_size: int, **options) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            keyring = vault.master_keyring()
        except vault.MasterKeyConfigurationError as exc:
            raise CommandError(str(exc)) from None
        if check:
            self._check(keyring)
        elif retire:
            self._retire(keyring, retire)
        else:
            self._rotate(keyring, batch_size)

    # ----------------------------------------------------------------------------------------------

    def _write_counts(self, title: str, counts: dict[str, int], keyring: vault.MasterKeyring) -> None:
        self.stdout.write(title)
        if not counts:
            self.stdout.write("  no stored values")
        for key_id, count in counts.items():
            if key_id == keyring.active_key_id:
                note = "active"
            elif key_id in keyring:
                note = "configured"
            else:
                note = "NOT CONFIGURED"
            self.stdout.write(f"  {key_id}: {count} ({note})")

    def _rotate(self, keyring: vault.MasterKeyring, batch_size: int) -> None:
        active = keyring.active_key_id
        self._write_counts("Values per master key before:", credential_count_by_master_key(), keyring)
        rewrapped: Counter[tuple[str, str]] = Counter()
        failures: dict[str, str] = {}
        for attempt in range(LOCKED_ROW_ATTEMPTS):
            while self._rotate_batch(active, batch_size, rewrapped, failures):
                pass
            pending = Credential.objects.exclude(master_key_id=active).exclude(pk__in=failures).count()
            if not pending:
                break
            if attempt + 1 < LOCKED_ROW_ATTEMPTS:
                time.sleep(1)  # the skipped rows are locked by another transaction; it will end soon
        else:
            failures.update({"(locked)": f"{pending} values stayed locked by other transactions"})

        for (source, target), count in sorted(rewrapped.items()):
            self.stdout.write(f"Re-wrapped {count} values from {source} to {target}.")
        if not rewrapped:
            self.stdout.write(f"Nothing to re-wrap: every value was under {active} already.")
        self._write_counts("Values per master key after:", credential_count_by_master_key(), keyring)
        if failures:
            for credential_id, reason in failures.items():
                self.stderr.write(f"  {credential_id}: {reason}")
            raise CommandError(f"{len(failures)} values were not re-wrapped; fix the cause and run again")
        self.stdout.write(self.style.SUCCESS(f"Every value is under master key {active}."))

    def _rotate_batch(
        self, active: str, batch_size: int, rewrapped: Counter[tuple[str, str]], failures: dict[str, str]
    ) -> bool:
        """Re-wrap one batch in one short transaction; False when no unlocked row is left to do."""
        with transaction.atomic():
            batch = list(
                Credential.objects.select_for_update(skip_locked=True)
                .exclude(master_key_id=active)
                .exclude(pk__in=failures)
                .order_by("pk")[:batch_size]
            )
            for credential in batch:
                source = credential.master_key_id
                try:
                    # A savepoint per row: one value that does not open leaves the rest of the batch.
                    with transaction.atomic():
                        credential_rewrap(credential=credential, key_id=active)
                except vault.VaultError as exc:
                    failures[str(credential.pk)] = str(exc)
                    logger.warning("credential not rewrapped id=%s master_key_id=%s", credential.pk, source)
                else:
                    rewrapped[(source, active)] += 1
        return bool(batch)

    # ----------------------------------------------------------------------------------------------

    def _check(self, keyring: vault.MasterKeyring) -> None:
        counts = credential_count_by_master_key()
        self._write_counts("Values per master key:", counts, keyring)
        problems = []
        unknown = [key_id for key_id in counts if key_id not in keyring]
        if unknown:
            problems.append(
                f"values use master key ids that are not configured in {vault.MASTER_KEYS_VARIABLE}: "
                + ", ".join(unknown)
            )
        broken = []
        # Unwrapping proves each configured id still names the key that wrapped it; no value is decrypted.
        configured = Credential.objects.filter(master_key_id__in=keyring.key_ids)
        for credential in configured.iterator(chunk_size=500):
            try:
                vault.verify_wrapped_key(credential.sealed_value, keyring=keyring)
            except vault.VaultError:
                broken.append(str(credential.pk))
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
        remaining = Credential.objects.filter(master_key_id=key_id).count()
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
