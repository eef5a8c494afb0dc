"""Celery tasks of the LLM providers, run by beat (``config/settings/integrations/schedule.py``).
Idempotent, and they take no arguments: each run reads the providers from the database."""

from celery import shared_task

from business_project.llm import services


@shared_task(name="llm.provider_health_check", soft_time_limit=25, time_limit=30, ignore_result=True)
def provider_health_check() -> int:
    # The probes run concurrently with a few seconds' timeout each, so one run fits in the 30 s period.
    return len(services.provider_health_check_run())


@shared_task(name="llm.provider_health_prune", soft_time_limit=240, time_limit=300)
def provider_health_prune() -> int:
    return services.provider_health_prune()
