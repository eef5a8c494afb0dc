from business_project.config.env import env
from service_kit.integrations import cache_settings

globals().update(cache_settings(redis_url=env.str("REDIS_URL", default=""), key_prefix="business"))
