from celery import shared_task

from business_project.chat.services import generation_reap_stale


@shared_task(name="chat.reap_stale_generations")
def reap_stale_generations() -> int:
    """End answers whose generator died with its process (run by beat; idempotent)."""
    return generation_reap_stale()
