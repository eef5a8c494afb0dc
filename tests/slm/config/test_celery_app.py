"""The SLM's Celery app: configuration, and a real worker round trip over the configured broker
(the filesystem broker locally, Redis in CI) with results stored by django-celery-results."""

import pytest
from celery.contrib.testing.worker import start_worker
from django_celery_results.models import TaskResult

from slm_project import celery_app


@celery_app.task(name="tests.slm.multiply")
def multiply(x: int, y: int) -> int:
    return x * y


def test_the_app_speaks_json_only_and_schedules_from_the_database():
    conf = celery_app.conf
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert conf.result_backend == "django-db"
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_time_limit > conf.task_soft_time_limit > 0
    assert conf.task_default_queue == "default"


@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_a_task_and_the_result_is_stored():
    with start_worker(
        celery_app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=10,
        # Named: a worker started with ``queues=`` changes the app's queue selection for the rest of the
        # process, so a worker without them would consume whatever an earlier test chose.
        queues=["default"],
    ):
        result = multiply.delay(6, 7)
        assert result.get(timeout=20) == 42
    stored = TaskResult.objects.get(task_id=result.id)
    assert stored.status == "SUCCESS"
    assert stored.task_name == "tests.slm.multiply"
