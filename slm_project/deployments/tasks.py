"""Celery tasks of deployments. They take a run id only (never a secret or a variable)."""

import logging

from celery import shared_task

from slm_project.deployments import execution, services
from slm_project.deployments.constants import RUN_TIMEOUT_SECONDS

logger = logging.getLogger(__name__)

REAP_TASK = "deployments.reap_runs"


@shared_task(
    bind=True,
    name=services.EXECUTE_TASK,
    # The run has its own timeout (ansible-runner stops Ansible); these only catch a hung executor.
    soft_time_limit=RUN_TIMEOUT_SECONDS + 120,
    time_limit=RUN_TIMEOUT_SECONDS + 180,
    # A run that may not start yet (busy nodes, the maintenance policy) is sent again, for as long as it
    # stays queued: the wait is visible on its row and an operator may cancel it.
    max_retries=None,
)
def execute_run(self, run_id: str) -> str:
    try:
        return execution.run_execute(run_id=run_id, owner=execution.executor_name(self.request.id or ""))
    except services.RunNotClaimable as exc:
        # A duplicate delivery, or another worker has the run: nothing to do here.
        logger.info("deployment run %s not executed here: %s", run_id, exc)
        return "skipped"
    except services.RunWaiting as exc:
        raise self.retry(countdown=exc.retry_in) from None


@shared_task(name=REAP_TASK, soft_time_limit=60, time_limit=90)
def reap_runs() -> dict[str, int]:
    """Beat: runs whose executor died become lost (and are retried); this host's orphans are killed."""
    return execution.runs_reap()


# The periodic tasks of the reconciler, the remediator and retention live in their own module; importing
# it here registers them (Celery's autodiscovery imports ``tasks`` modules only).
from slm_project.deployments import tasks_maintenance  # noqa: E402, F401
