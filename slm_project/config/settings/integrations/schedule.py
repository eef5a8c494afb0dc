"""The SLM's periodic work, synced into django-celery-beat's tables by the DatabaseScheduler (operators
can pause or retime an entry in the admin; a restart of beat restores these definitions)."""

CELERY_BEAT_SCHEDULE = {
    "fleet-heartbeat-watch": {"task": "fleet.heartbeat_watch", "schedule": 30.0},
    "fleet-metrics-rollup-5m": {"task": "fleet.metrics_rollup", "schedule": 300.0, "args": ["5m"]},
    "fleet-metrics-rollup-1h": {"task": "fleet.metrics_rollup", "schedule": 3600.0, "args": ["1h"]},
    "fleet-metrics-prune": {"task": "fleet.metrics_prune", "schedule": 3600.0},
}
