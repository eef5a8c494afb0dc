from business_project.config.env import VAR_DIR, env
from service_kit.integrations import database_settings

globals().update(database_settings(env.database(default=f"sqlite:///{VAR_DIR / 'business.sqlite3'}")))
