from service_kit.integrations import database_settings
from business_project.config.env import VAR_DIR, env

globals().update(database_settings(env.database(default=f"sqlite:///{VAR_DIR / 'business.sqlite3'}")))
