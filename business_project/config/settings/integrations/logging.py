from business_project.config.env import env
from service_kit.integrations import logging_settings

globals().update(logging_settings(level=env.str("LOG_LEVEL", default="INFO").upper()))
