"""The business app's master keys, sealing the secrets it stores (LLM provider API keys; see
``business_project.llm.vault`` and ``service_kit.envelope``).

``MASTER_KEYS`` is ``kid:base64key[,kid:base64key…]`` (32-byte AES keys); ``MASTER_KEY_ID`` names the
one new values are wrapped with (default: the last listed). ``BUSINESS_MASTER_KEYS`` wins over a plain
``MASTER_KEYS``, so the business app never shares the SLM's keys by accident when one shell or ``.env``
configures both. Without either (``make run``), a key is generated once into ``var/business/master_keys``
(0600); production requires the variable.
"""

from business_project.config.env import VAR_DIR, env

VAULT_MASTER_KEYS = env.str("MASTER_KEYS", default="")
VAULT_MASTER_KEY_ID = env.str("MASTER_KEY_ID", default="")
VAULT_MASTER_KEYS_FILE = VAR_DIR / "master_keys"
