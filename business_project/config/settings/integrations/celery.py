from business_project.config.env import VAR_DIR, env
from service_kit.integrations import celery_settings

globals().update(
    celery_settings(
        broker_url=env.str("CELERY_BROKER_URL", default="") or env.str("REDIS_URL", default=""),
        var_dir=VAR_DIR,
    )
)
