"""The credential vault's master keys (see ``slm_project.security.vault``).

``MASTER_KEYS`` is ``kid:base64key[,kid:base64key…]`` (32-byte AES keys); ``MASTER_KEY_ID`` names the
one new values are wrapped with (default: the last listed). Without ``MASTER_KEYS`` (``make run``), a
key is generated once into ``var/slm/master_keys`` (0600); production requires the variable.
"""

from slm_project.config.env import VAR_DIR, env

VAULT_MASTER_KEYS = env.str("MASTER_KEYS", default="")
VAULT_MASTER_KEY_ID = env.str("MASTER_KEY_ID", default="")
VAULT_MASTER_KEYS_FILE = VAR_DIR / "master_keys"
