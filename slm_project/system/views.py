"""Liveness and readiness of this SLM process (see ``service_kit.probes``)."""

from service_kit.probes import broker_check, cache_check, database_check, healthz_view, readyz_view
from slm_project import celery_app

healthz = healthz_view()
readyz = readyz_view(
    {"database": database_check(), "cache": cache_check(), "broker": broker_check(celery_app)}
)
