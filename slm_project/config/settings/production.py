"""SLM production settings: the values below must come from the environment, or start-up stops naming
what is missing or malformed."""

from service_kit.integrations import production_settings
from slm_project.config.env import env

env.require("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "MASTER_KEYS")

from slm_project.config.settings.base import *  # noqa: E402, F403

globals().update(production_settings(env, current=globals()))
