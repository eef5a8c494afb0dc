from service_kit.integrations import logging_settings
from business_project.config.env import env

globals().update(logging_settings(level=env.str("LOG_LEVEL", default="INFO").upper()))
