"""The SLM's periodic work, synced into django-celery-beat's tables by the DatabaseScheduler (operators
can pause or retime an entry in the admin; a restart of beat restores these definitions)."""

from slm_project.config.settings.integrations.deployments import DEPLOYMENTS_CHECK_RUN_INTERVAL_SECONDS

CELERY_BEAT_SCHEDULE = {
    "fleet-heartbeat-watch": {"task": "fleet.heartbeat_watch", "schedule": 30.0},
    "fleet-metrics-rollup-5m": {"task": "fleet.metrics_rollup", "schedule": 300.0, "args": ["5m"]},
    "fleet-metrics-rollup-1h": {"task": "fleet.metrics_rollup", "schedule": 3600.0, "args": ["1h"]},
    "fleet-metrics-prune": {"task": "fleet.metrics_prune", "schedule": 3600.0},
    # Runs whose worker died (lease expired) become lost and are retried; see deployments.constants.
    "deployments-reap-runs": {"task": "deployments.reap_runs", "schedule": 15.0},
    # The reconciler, check-mode runs, the remediator and event retention (deployments/tasks_maintenance.py).
    "deployments-reconcile": {"task": "deployments.reconcile", "schedule": 300.0},
    "deployments-check-runs": {
        "task": "deployments.check_runs",
        "schedule": float(DEPLOYMENTS_CHECK_RUN_INTERVAL_SECONDS),
    },
    "deployments-remediate": {"task": "deployments.remediate", "schedule": 60.0},
    "deployments-events-prune": {"task": "deployments.events_prune", "schedule": 24 * 3600.0},
}
