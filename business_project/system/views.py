"""Liveness and readiness of this business process (see ``service_kit.probes``).

The SLM is reported under ``info`` and never decides readiness: the business app keeps serving chat,
knowledge and workflows while the management layer is down.
"""

from business_project import celery_app
from business_project.integrations.slm.gateway import slm_status
from service_kit.probes import broker_check, cache_check, database_check, healthz_view, readyz_view

healthz = healthz_view()
readyz = readyz_view(
    {"database": database_check(), "cache": cache_check(), "broker": broker_check(celery_app)},
    info={"slm": lambda: slm_status().as_dict()},
)
