import uuid

from django.db import models
from django.db.models.functions import Length
from django.db.models.lookups import Exact
from django.utils import timezone

from slm_project.security import vault
from slm_project.security.choices import CredentialKind


class Credential(models.Model):
    """A secret the SLM uses to reach something (an SSH key or password, an API token), sealed by the vault.

    Domain rules:

    - The secret is stored only envelope-encrypted (``slm_project.security.vault``): ``ciphertext`` under a
      data key of its own, that data key wrapped (``wrapped_data_key``) by the master key ``master_key_id``.
      Master keys live in the environment, never here, so a dump of this table reveals no secret.
    - The ciphertext is bound to this row's id (``vault_context``): parts copied to another row do not open.
    - Rotating a master key re-wraps the data key only (``rewrapped_at``); replacing the secret re-seals
      everything under a new data key (``secret_changed_at``).
    - ``public_metadata`` holds only what is safe to show, set by the caller (e.g. an SSH key's public-key
      fingerprint); nothing derived from the secret without the caller's decision goes there.
    - Rows are written through ``services`` only; decrypted material never comes back through a model method.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=32, choices=CredentialKind.choices)
    master_key_id = models.CharField(max_length=vault.KEY_ID_MAX_LENGTH, db_index=True, editable=False)
    wrapped_data_key = models.BinaryField(editable=False)
    key_nonce = models.BinaryField(editable=False)
    data_nonce = models.BinaryField(editable=False)
    ciphertext = models.BinaryField(editable=False)
    public_metadata = models.JSONField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    secret_changed_at = models.DateTimeField(default=timezone.now, editable=False)
    rewrapped_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.CheckConstraint(condition=~models.Q(name=""), name="security_credential_name_not_empty"),
            models.CheckConstraint(
                condition=models.Q(kind__in=CredentialKind.values), name="security_credential_kind_valid"
            ),
            models.CheckConstraint(
                condition=~models.Q(master_key_id=""), name="security_credential_master_key_id_not_empty"
            ),
            # The vault's fixed sizes: a row that breaks them was not written by the vault.
            models.CheckConstraint(
                condition=Exact(Length("key_nonce"), vault.NONCE_BYTES),
                name="security_credential_key_nonce_length",
            ),
            models.CheckConstraint(
                condition=Exact(Length("data_nonce"), vault.NONCE_BYTES),
                name="security_credential_data_nonce_length",
            ),
            models.CheckConstraint(
                condition=Exact(Length("wrapped_data_key"), vault.WRAPPED_KEY_BYTES),
                name="security_credential_wrapped_data_key_length",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_kind_display()})"

    @property
    def vault_context(self) -> str:
        """The associated data that binds the sealed value to this row."""
        return f"credential:{self.id}"

    @property
    def sealed_value(self) -> vault.SealedValue:
        # Drivers return BinaryField values as memoryview (PostgreSQL) or bytes (SQLite).
        return vault.SealedValue(
            master_key_id=self.master_key_id,
            wrapped_data_key=bytes(self.wrapped_data_key),
            key_nonce=bytes(self.key_nonce),
            data_nonce=bytes(self.data_nonce),
            ciphertext=bytes(self.ciphertext),
        )

    def set_sealed_value(self, sealed: vault.SealedValue) -> None:
        self.master_key_id = sealed.master_key_id
        self.wrapped_data_key = sealed.wrapped_data_key
        self.key_nonce = sealed.key_nonce
        self.data_nonce = sealed.data_nonce
        self.ciphertext = sealed.ciphertext
