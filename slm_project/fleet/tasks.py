"""Celery tasks of the fleet. They take a node id only (never credentials), re-read the node and are
idempotent: a duplicate delivery of an enrollment finds the node no longer ``enrolling`` and stops."""

from celery import shared_task

from slm_project.fleet import enrollment

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
