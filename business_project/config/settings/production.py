"""Business production settings: the values below must come from the environment, or start-up stops naming
what is missing or malformed."""

from django.core.exceptions import ImproperlyConfigured

from business_project.config.env import env
from service_kit.integrations import production_settings

env.require("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "SLM_API_URL", "MASTER_KEYS")

from business_project.config.settings.base import *  # noqa: E402, F403

globals().update(production_settings(env, current=globals()))

# The SLM token may come from the environment or from a file (a Docker/Kubernetes secret).
if not SLM_API_TOKEN:  # noqa: F405
    raise ImproperlyConfigured(
        f"Required environment variables are not set: {env.names_for('SLM_API_TOKEN')}"
        f" — or {env.names_for('SLM_API_TOKEN_FILE')} naming a file that holds it"
    )
