"""Benchmark: how fast the SLM stores a run's Ansible events through the real ingest path, losing none.

Goal (issue 4): >= 5,000 events/s on this 2-core machine, zero loss. The path measured is the one a
running deployment takes: ``runners.ansible.EventPump`` (``event_record``, secret redaction, a buffer
flushed at ``EVENT_BATCH_SIZE`` events or ``EVENT_FLUSH_SECONDS``, the flush-if-due poll that
ansible-runner's loop calls a few times a second) hands batches to ``execution.RunWatch.store``, which
writes them with ``services.deployment_events_store`` (one fenced ``UPDATE`` of the run row and one
``bulk_create``, in a transaction) under the lease of a run claimed with ``deployment_run_claim``.
The baseline, in the same run and the same database: the same rows (as the ingest path stored them),
inserted with a plain ``bulk_create`` in batches of the same size, nothing else.

The events are synthetic, in ansible-runner's shapes (``playbook_on_*``, ``runner_on_start``,
``runner_on_ok`` with and without changes, stdout, a module result with ``invocation`` and a secret in
it); they are made before the clock starts, as ansible-runner makes them in another process.

    .venv/bin/python bench/event_ingest.py [--events 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import (
    SlmInstance,
    ThrowawayDatabase,
    load_average,
    make_var_dir,
    median,
    remove_dir,
    say,
)

BENCHMARK = "event_ingest"
GOAL_RATE = 5000.0
GOAL = f">= {GOAL_RATE:,.0f} events/s with zero loss (stored == emitted, counters 1..N in order)"

# Runs inside the SLM's environment (Django set up there): the bench process itself never imports Django.
# argv: events per round, rounds. Prints progress lines and a last line "RESULT <json>".
INGEST_SCRIPT = r"""
import json, statistics, sys, time, uuid
from datetime import UTC, datetime

import django
django.setup()

from django.db import connection
from slm_project.deployments import services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.constants import EVENT_BATCH_SIZE, EVENT_FLUSH_SECONDS, RUN_TIMEOUT_SECONDS
from slm_project.deployments.execution import RunWatch
from slm_project.deployments.models import Deployment, DeploymentEvent, DeploymentRun
from slm_project.deployments.runners.ansible import EventPump, Redactor, RUNNER_POLL_SECONDS
from tests.slm.deployments.factories import make_online_node

EVENTS, ROUNDS = int(sys.argv[1]), int(sys.argv[2])
SECRET = "s3cr3t-" + uuid.uuid4().hex  # what the vault would hand the run (e.g. redis_password)
HOSTS = [f"node-{index}" for index in range(4)]
TASKS = ["Gathering Facts", "redis-server is installed", "redis.conf is written",
         "redis-server is restarted (direct)", "redis answers PING"]


def synthetic_events(count):
    # ansible-runner's event shapes: a play start, then per task a task start and, per host, a
    # runner_on_start and a runner_on_ok (some changed, with stdout and a module result holding the
    # secret and the bulky keys the adapter drops); playbook_on_stats last.
    play_uuid, base = str(uuid.uuid4()), {"runner_ident": "bench", "pid": 4242}
    events, counter = [], 0

    def add(name, data, stdout=""):
        nonlocal counter
        counter += 1
        events.append({**base, "event": name, "counter": counter, "uuid": str(uuid.uuid4()),
                       "parent_uuid": data.get("parent_uuid", ""), "stdout": stdout,
                       "start_line": counter, "end_line": counter + 1,
                       "created": datetime.now(UTC).isoformat(), "event_data": data})

    add("playbook_on_start", {"playbook": "deploy.yml", "playbook_uuid": play_uuid})
    add("playbook_on_play_start", {"play": "Redis", "name": "Redis", "pattern": "redis",
                                   "parent_uuid": play_uuid}, "\r\nPLAY [Redis] ****")
    index = 0
    while counter < count - 1:
        task = TASKS[index % len(TASKS)]
        task_uuid = str(uuid.uuid4())
        add("playbook_on_task_start", {"play": "Redis", "task": task, "name": task, "role": "redis",
                                       "task_uuid": task_uuid, "parent_uuid": play_uuid},
            f"\r\nTASK [redis : {task}] " + "*" * 60)
        for host in HOSTS:
            if counter >= count - 3:
                break
            common = {"play": "Redis", "task": task, "role": "redis", "host": host,
                      "remote_addr": "10.213.0.2", "task_uuid": task_uuid, "parent_uuid": task_uuid}
            add("runner_on_start", dict(common))
            changed = index % 3 == 1
            result = {
                "changed": changed,
                "msg": f"line replaced: requirepass {SECRET}" if changed else "",
                "dest": "/etc/redis/redis.conf", "mode": "0640", "owner": "redis", "size": 2048,
                "checksum": uuid.uuid4().hex, "diff": [{"before": "", "after": "x" * 200}],
                "invocation": {"module_args": {"dest": "/etc/redis/redis.conf",
                                              "line": f"requirepass {SECRET}", "backup": False}},
                "_ansible_no_log": False,
            }
            add("runner_on_ok", dict(common, duration=0.0123 * (index % 7 + 1), res=result,
                                     start="2026-11-27T14:00:00", end="2026-11-27T14:00:01"),
                f"{'changed' if changed else 'ok'}: [{host}]")
        index += 1
    stats = {"changed": {host: 1 for host in HOSTS}, "ok": {host: index for host in HOSTS},
             "failures": {}, "dark": {}, "skipped": {}, "rescued": {}, "ignored": {}}
    while counter < count:
        add("playbook_on_stats", dict(stats, playbook_uuid=play_uuid), "\r\nPLAY RECAP ****")
    return events


def new_claimed_run(node, index):
    deployment = Deployment.objects.create(roles=["redis"], requested_by="bench:event_ingest")
    deployment.nodes.set([node])
    run = DeploymentRun.objects.create(deployment=deployment, timeout_seconds=RUN_TIMEOUT_SECONDS)
    lease = services.deployment_run_claim(run_id=run.pk, owner=f"bench:{index}", host="bench", pid=0)
    return run, lease


def ingest(events, lease):
    # What run_playbook and RunWatch do, minus ansible-runner: every event to the pump's __call__, and
    # the cancel callback (flush_if_due, then should_cancel) whenever RUNNER_POLL_SECONDS have passed.
    watch = RunWatch(lease)
    watch.begin_playbook()
    pump = EventPump(watch.store, Redactor([SECRET]))
    polls = 0
    started = last_poll = time.perf_counter()
    for event in events:
        pump(event)
        now = time.perf_counter()
        if now - last_poll >= RUNNER_POLL_SECONDS:
            pump.flush_if_due()
            watch.should_cancel()
            last_poll, polls = now, polls + 1
    pump.flush()
    elapsed = time.perf_counter() - started
    if watch.failure or watch.lease_lost:
        raise SystemExit(f"the ingest path failed: {watch.failure or 'lease lost'}")
    services.deployment_run_finish(lease=lease, status=RunStatus.SUCCEEDED, emitted=watch.emitted,
                                   host_stats=pump.host_stats)
    return elapsed, pump.emitted, polls


def check(run_id, emitted):
    # Exactly, in the database: every event stored once, counters 1..N in order, the run's counters
    # agree, and the secret is nowhere in what was stored.
    run = DeploymentRun.objects.get(pk=run_id)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT counter), min(counter), max(counter),"
            " bool_and(counter = rn), count(*) FILTER (WHERE stdout LIKE %s OR result::text LIKE %s),"
            " count(*) FILTER (WHERE result::text LIKE '%%********%%')"
            " FROM (SELECT counter, stdout, result, row_number() OVER (ORDER BY id) AS rn"
            " FROM deployments_deploymentevent WHERE run_id = %s) AS stored",
            [f"%{SECRET}%", f"%{SECRET}%", run_id],
        )
        count, distinct, low, high, in_order, leaked, redacted = cursor.fetchone()
    ok = (count == distinct == emitted == run.events_stored == run.events_emitted and low == 1
          and high == emitted and in_order and leaked == 0 and run.status == RunStatus.SUCCEEDED)
    return {"stored": count, "distinct": distinct, "min": low, "max": high, "in_insert_order": in_order,
            "run_events_stored": run.events_stored, "run_events_emitted": run.events_emitted,
            "secret_leaks": leaked, "redacted_rows": redacted, "status": run.status, "ok": ok}


def baseline(node, index, rows):
    # The same rows, as the ingest path stored them, inserted with a plain bulk_create in batches of
    # EVENT_BATCH_SIZE (autocommit: one transaction per batch), into a run of their own.
    run, lease = new_claimed_run(node, f"baseline-{index}")
    fields = ["counter", "uuid", "parent_uuid", "event", "host", "play", "task", "changed", "failed",
              "duration", "stdout", "result", "created_at"]
    started = time.perf_counter()
    for start in range(0, len(rows), EVENT_BATCH_SIZE):
        DeploymentEvent.objects.bulk_create(
            [DeploymentEvent(run_id=run.pk, **dict(zip(fields, row)))
             for row in rows[start:start + EVENT_BATCH_SIZE]]
        )
    elapsed = time.perf_counter() - started
    stored = DeploymentEvent.objects.filter(run_id=run.pk).count()
    services.deployment_run_finish(lease=lease, status=RunStatus.SUCCEEDED, emitted=len(rows))
    return elapsed, stored


node = make_online_node(name="bench-node", address="192.0.2.10")
events = synthetic_events(EVENTS)
kinds = {}
for event in events:
    kinds[event["event"]] = kinds.get(event["event"], 0) + 1
size = sum(len(json.dumps(event)) for event in events) / len(events)
print(f"synthetic events: {len(events)} per round ({kinds}); {size:.0f} bytes of JSON each on average",
      flush=True)
print(f"batching: {EVENT_BATCH_SIZE} events or {EVENT_FLUSH_SECONDS} s; poll every {RUNNER_POLL_SECONDS} s",
      flush=True)

# One warm-up round of each, not counted (connections, caches, the first pages of the table).
new_run, lease = new_claimed_run(node, "warm-up")
ingest(events[:2000], lease)
rounds = []
for index in range(1, ROUNDS + 1):
    run, lease = new_claimed_run(node, index)
    elapsed, emitted, polls = ingest(events, lease)
    verdict = check(run.pk, emitted)
    rows = list(DeploymentEvent.objects.filter(run_id=run.pk).order_by("counter").values_list(
        "counter", "uuid", "parent_uuid", "event", "host", "play", "task", "changed", "failed",
        "duration", "stdout", "result", "created_at"))
    if index == 1:
        baseline(node, "warm-up", rows[:2000])
    base_elapsed, base_stored = baseline(node, index, rows)
    item = {"round": index, "events": emitted, "seconds": elapsed, "rate": emitted / elapsed, "polls": polls,
            "baseline_seconds": base_elapsed, "baseline_rate": base_stored / base_elapsed,
            "baseline_stored": base_stored, "check": verdict}
    rounds.append(item)
    print(f"round {index}/{ROUNDS}: ingest {item['rate']:8.0f} events/s ({elapsed:.2f} s, {polls} polls); "
          f"plain bulk_create {item['baseline_rate']:8.0f} rows/s ({base_elapsed:.2f} s); "
          f"check {'ok' if verdict['ok'] and base_stored == emitted else 'FAILED'}: stored "
          f"{verdict['stored']} of {emitted}, counters {verdict['min']}..{verdict['max']}, "
          f"in order {verdict['in_insert_order']}, secret leaks {verdict['secret_leaks']} "
          f"({verdict['redacted_rows']} rows redacted)", flush=True)
print("RESULT " + json.dumps(rounds, default=str), flush=True)
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="events per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    say(f"# {BENCHMARK}: {args.rounds} rounds of {args.events} synthetic ansible-runner events, goal {GOAL}")
    say(f"load average before set-up: {load_average()}")
    with ExitStack() as cleanup:
        var_dir = make_var_dir("autobot-bench-event-ingest-")
        cleanup.callback(remove_dir, var_dir)
        database = ThrowawayDatabase(var_dir=var_dir).create()
        cleanup.callback(database.drop)
        if database.engine != "postgresql":
            raise SystemExit("this benchmark needs PostgreSQL (AUTOBOT_BENCH_POSTGRES_URL): no answer")
        say(f"database: throwaway {database.name}")
        slm = SlmInstance(database_url=database.url, var_dir=var_dir)
        started = time.monotonic()
        slm.manage("migrate", "--noinput", "-v0")
        say(f"set-up: migrate ({time.monotonic() - started:.1f} s)")
        output = slm.python("-c", INGEST_SCRIPT, str(args.events), str(args.rounds), timeout=1800).stdout
        rounds = []
        for line in output.splitlines():
            if line.startswith("RESULT "):
                rounds = json.loads(line.removeprefix("RESULT "))
            else:
                say(line)
        say(f"load average after the rounds: {load_average()}")

    rates = [item["rate"] for item in rounds]
    baseline_rates = [item["baseline_rate"] for item in rounds]
    correct = bool(rounds) and all(
        item["check"]["ok"] and item["baseline_stored"] == item["events"] for item in rounds
    )
    figure, baseline = median(rates), median(baseline_rates)
    goal_met = correct and figure >= GOAL_RATE
    say(
        f"result: {figure:.0f} events/s (median of {len(rates)}: {', '.join(f'{r:.0f}' for r in rates)}); "
        f"plain bulk_create {baseline:.0f} rows/s; ratio {figure / baseline:.3f}; "
        f"zero loss {'yes' if correct else 'NO'}; goal {'met' if goal_met else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "benchmark": BENCHMARK,
                "figure": round(figure, 1),
                "unit": "events/s",
                "goal": GOAL,
                "baseline": round(baseline, 1),
                "ratio": round(figure / baseline, 4),
                "runs": [round(rate, 1) for rate in rates],
                "baseline_runs": [round(rate, 1) for rate in baseline_rates],
                "events_per_round": args.events,
                "zero_loss": correct,
                "goal_met": goal_met,
                "database": "postgresql",
                "loadavg": load_average(),
            },
            ensure_ascii=False,
        ),
        flush=True,
    )
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
