"""Celery tasks of deployments. They take a run id only (never a secret or a variable)."""

import logging

from celery import shared_task

from slm_project.deployments import execution, services
from slm_project.deployments.constants import RUN_TIMEOUT_SECONDS

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name=services.EXECUTE_TASK,
    # The run has its own timeout (ansible-runner stops Ansible); these only catch a hung executor.
    soft_time_limit=RUN_TIMEOUT_SECONDS + 120,
    time_limit=RUN_TIMEOUT_SECONDS + 180,
)
def execute_run(self, run_id: str) -> str:
    try:
        return execution.run_execute(run_id=run_id, owner=execution.executor_name(self.request.id or ""))
    except services.RunNotClaimable as exc:
        # A duplicate delivery, or another worker has the run: nothing to do here.
        logger.info("deployment run %s not executed here: %s", run_id, exc)
        return "skipped"
