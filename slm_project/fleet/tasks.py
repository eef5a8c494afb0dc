"""Celery tasks of the fleet. They take a node id only (never credentials), re-read the node and are
idempotent: a duplicate delivery of an enrollment finds the node no longer ``enrolling`` and stops."""

from celery import shared_task

from slm_project.fleet import enrollment, metrics, services

# Enrollment talks to one host with bounded timeouts; a crash is redelivered (acks late) and the
# second run sees the state the first one left.
ENROLL_TIME_LIMIT = 300


@shared_task(
    name="fleet.enroll_node",
    queue="default",
    soft_time_limit=ENROLL_TIME_LIMIT - 30,
    time_limit=ENROLL_TIME_LIMIT,
)
def enroll_node(node_id: str) -> str:
    return enrollment.enrollment_run(node_id=node_id).state


@shared_task(name="fleet.test_node_connection", soft_time_limit=90, time_limit=120)
def test_node_connection(node_id: str, actor: str) -> dict:
    return enrollment.connection_test_run(node_id=node_id, actor=actor)


@shared_task(name="fleet.heartbeat_watch", soft_time_limit=60, time_limit=90)
def heartbeat_watch() -> int:
    return len(services.node_heartbeat_watch())


@shared_task(name="fleet.metrics_rollup", soft_time_limit=240, time_limit=300)
def metrics_rollup(resolution: str) -> int:
    return metrics.metrics_rollup(resolution=resolution)


@shared_task(name="fleet.metrics_prune", soft_time_limit=600, time_limit=900)
def metrics_prune() -> dict:
    return metrics.metrics_prune()
