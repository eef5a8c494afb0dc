"""The business app's periodic work, synced into django-celery-beat's tables by the DatabaseScheduler
(operators can pause or retime an entry in the admin; a restart of beat restores these definitions)."""

from business_project.config.settings.integrations.llm import LLM_HEALTH_INTERVAL_SECONDS

CELERY_BEAT_SCHEDULE = {
    "llm-provider-health": {"task": "llm.provider_health_check", "schedule": LLM_HEALTH_INTERVAL_SECONDS},
    "llm-provider-health-prune": {"task": "llm.provider_health_prune", "schedule": 3600.0},
    # Answers left "streaming" by a web process that died are ended (chat.services.generation_reap_stale).
    "chat-reap-stale-generations": {"task": "chat.reap_stale_generations", "schedule": 300.0},
}
