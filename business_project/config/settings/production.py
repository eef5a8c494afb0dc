"""Business production settings: the values below must come from the environment, or start-up stops naming
what is missing or malformed."""

from business_project.config.env import env
from service_kit.integrations import production_settings

env.require("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "SLM_API_URL", "SLM_API_TOKEN")

from business_project.config.settings.base import *  # noqa: E402, F403

globals().update(production_settings(env, current=globals()))
