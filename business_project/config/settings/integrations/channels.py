from business_project.config.env import env
from service_kit.integrations import channel_layer_settings

globals().update(channel_layer_settings(redis_url=env.str("REDIS_URL", default=""), prefix="business"))
