"""Deployments with runs and stored events, made through the real services (request, claim, fenced event
writes, finish) without Ansible or a worker: what an executor would have written."""

from __future__ import annotations

import uuid
from typing import Any

from slm_project.deployments import services
from slm_project.deployments.models import Deployment, DeploymentRun
from slm_project.fleet.models import Node

TASKS = ("Gathering Facts", "install redis", "configure redis", "start redis")


def request(nodes: list[Node], **overrides: Any) -> Deployment:
    values = {"node_ids": [node.pk for node in nodes], "roles": ["redis"], "requested_by": "user:ops"}
    return services.deployment_create(**(values | overrides))


def record(counter: int, event: str, *, host: str = "", task: str = "", changed: bool = False) -> dict:
    return {
        "counter": counter,
        "uuid": str(uuid.uuid4()),
        "parent_uuid": None,
        "event": event,
        "host": host,
        "play": "deploy" if event != "playbook_on_start" else "",
        "task": task,
        "changed": changed,
        "failed": event in ("runner_on_failed", "runner_on_unreachable"),
        "duration": 0.25 if event.startswith("runner_on_") else None,
        "stdout": f"{event} {host} {task}".strip(),
        "result": {"changed": changed} if event.startswith("runner_on_") else {},
        "created": None,
    }


def playbook_events(hosts: list[str], *, tasks: int = len(TASKS), fail_on: str | None = None) -> list[dict]:
    """Ansible's events for ``tasks`` tasks over ``hosts``: each task starts once and reports per host
    (the second task changes something; ``fail_on`` fails the last task on that host)."""
    events = [record(1, "playbook_on_start"), record(2, "playbook_on_play_start")]
    for index in range(tasks):
        task = TASKS[index % len(TASKS)]
        events.append(record(len(events) + 1, "playbook_on_task_start", task=task))
        for host in hosts:
            if fail_on == host and index == tasks - 1:
                events.append(record(len(events) + 1, "runner_on_failed", host=host, task=task))
            else:
                events.append(
                    record(len(events) + 1, "runner_on_ok", host=host, task=task, changed=index == 1)
                )
    return events


def recap(hosts: list[str], *, tasks: int = len(TASKS), fail_on: str | None = None) -> dict:
    stats = {}
    for host in hosts:
        failed = int(host == fail_on)
        stats[host] = {
            "ok": tasks - failed,
            "changed": 1,
            "failed": failed,
            "unreachable": 0,
            "skipped": 0,
            "rescued": 0,
            "ignored": 0,
        }
    return stats


def run_with_events(
    run: DeploymentRun,
    events: list[dict],
    *,
    finish: str | None = None,
    host_stats: dict | None = None,
    emitted: int | None = None,
) -> services.Lease:
    """Claim the run, store ``events`` in batches of 5 and, with ``finish``, end it with that status."""
    lease = services.deployment_run_claim(run_id=run.pk, owner="test-worker")
    total = emitted if emitted is not None else len(events)
    for start in range(0, len(events), 5):
        services.deployment_events_store(lease=lease, records=events[start : start + 5], emitted=total)
    if finish is not None:
        services.deployment_run_finish(lease=lease, status=finish, host_stats=host_stats, emitted=total, rc=0)
    return lease
