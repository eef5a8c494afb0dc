"""Benchmark: what a deployment through the SLM costs over running the same playbook by hand.

Goal (issue 4): SLM median / plain median <= 1.15 and <= 1.5 s added at the median. Both sides run
``ansible/playbooks/deploy.yml`` with the ``redis`` role (the ``common`` baseline play included) against
the same isolated host (``tests/fixtures/isolated_host.py``: a cached Debian root in a network namespace
with its own sshd), alternating, one round each at a time:

- **SLM**: ``POST /api/v1/deployments`` to a running SLM web process (gunicorn), executed by a real Celery
  worker process (Redis broker), the client polling ``GET /api/v1/deployments/<id>`` every 0.1 s until
  ``succeeded``. Timed from the POST to the poll that sees the end.
- **plain**: ``ansible-playbook`` with the inventory, key, known_hosts, extra vars and Ansible settings the
  SLM's adapter builds for such a run (its own stage functions ``build_private_data_dir`` and
  ``ansible_environment``: strict host key checking, the same SSH options), timed around the process;
  its SSH control master is stopped and the directory removed after each round, as the adapter does.

A first run of each, not counted, installs the configuration; the measured runs change nothing (the
same for both sides). Needs root (namespaces, mounts), debootstrap, PostgreSQL and Redis on loopback.

    .venv/bin/python bench/deploy_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _support import (
    REPO_DIR,
    STOP_TIMEOUT_SECONDS,
    SlmInstance,
    ThrowawayDatabase,
    load_average,
    make_var_dir,
    median,
    remove_dir,
    say,
)

BENCHMARK = "deploy_overhead"
GOAL_RATIO = 1.15
GOAL_ADDED_SECONDS = 1.5
GOAL = f"SLM/plain <= {GOAL_RATIO} and <= {GOAL_ADDED_SECONDS} s added at the median"
REDIS_URL = os.environ.get("AUTOBOT_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
RUN_WAIT_SECONDS = 300
POLL_SECONDS = 0.1
CONTRACT_HEADERS = {"Accept": "application/json", "X-AutoBot-Contract": "1.0"}

# Runs in the SLM's environment: the isolated host as an online node with its real, pinned host key (what
# enrollment leaves; enrollment itself is not measured), an API client, the SLM's SSH key and the vault's
# Redis password (for the plain side). argv: address, port, user, "type key", fingerprint, key file.
# Prints one JSON line.
SETUP_SCRIPT = r"""
import json, os, sys
import django
django.setup()
from slm_project.access.services import api_client_create
from slm_project.deployments import services
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import NodeState, Trigger
from slm_project.fleet.enrollment import slm_identity
from slm_project.fleet.states import node_transition
from slm_project.security.services import credential_reveal

address, port, user, host_key, fingerprint, key_file = sys.argv[1:7]
node = fleet_services.node_create(name="bench-host", address=address, ssh_port=int(port), ssh_user=user,
                                  actor="bench:deploy_overhead")
key_type, key_base64 = host_key.split()
fleet_services.node_host_key_capture(node=node, key_type=key_type, key_base64=key_base64,
                                     fingerprint=fingerprint, actor="bench:deploy_overhead")
node.refresh_from_db()
node = fleet_services.node_host_key_accept(node=node, fingerprint=fingerprint, actor="bench:deploy_overhead")
for state in (NodeState.ENROLLING, NodeState.ONLINE):
    node = node_transition(node=node, to_state=state, trigger=Trigger.SYSTEM, actor="bench")
identity = slm_identity()
fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "wb") as handle:
    handle.write(credential_reveal(credential=identity.credential))
_, token = api_client_create(name="bench", scopes=["deployments:read", "deployments:write"])
print(json.dumps({
    "node_id": str(node.pk), "node_name": node.name, "token": token, "public_key": identity.public_key,
    "redis_password": services.vault_variable(role="redis", variable="redis_password"),
}))
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds of each side (default 5)")
    return parser.parse_args()


# --- the isolated host -----------------------------------------------------------------------------------


def start_isolated_host(cleanup: ExitStack, var_dir: Path):
    """The test fixture's host, started through its module (it is a pytest plugin; its session class is
    used here as a library, unchanged)."""
    from tests.fixtures import isolated_host as machinery

    reason = machinery.missing_capability()
    if reason:
        raise SystemExit(f"the isolated host cannot run here: {reason}")
    lower = machinery.cached_root()
    directory = var_dir / "host"
    directory.mkdir()
    # The fixture's only starter is this class; used as is rather than copied.
    session = machinery._Session(directory)
    cleanup.callback(session.stop)
    return session.start(lower)


# --- the SLM side ----------------------------------------------------------------------------------------


def free_redis_db(cleanup: ExitStack) -> str:
    """A Redis database with nothing in it (so no other worker shares our queues); the keys the broker
    made in it are deleted at the end."""
    import redis

    for number in range(7, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_URL}/{number}", socket_timeout=5)
        if client.dbsize() == 0:
            cleanup.callback(_delete_keys, client)
            return f"{REDIS_URL}/{number}"
    raise SystemExit(f"no empty Redis database among 1..7 at {REDIS_URL}")


def _delete_keys(client) -> None:
    for key in client.scan_iter(count=500):
        client.delete(key)


def start_worker(slm: SlmInstance, var_dir: Path) -> subprocess.Popen:
    # As the Procfile runs it, on the queues a deployment uses; one process for one run at a time.
    log = (var_dir / "worker.log").open("ab")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "celery"),
            "-A",
            "slm_project",
            "worker",
            "-Q",
            "deployments,default",
            "--concurrency",
            "1",
            "--hostname",
            f"bench-{secrets.token_hex(3)}@%h",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=REPO_DIR,
        env=slm.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return process


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def api(slm: SlmInstance, token: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", slm.port, timeout=30)
    try:
        headers = {**CONTRACT_HEADERS, "Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def deploy_via_slm(slm: SlmInstance, token: str, node_id: str) -> tuple[float, dict]:
    """Seconds from the POST to the poll that sees the end; the deployment's detail, with ``_phases``: the
    wait before the worker claimed the run, the run itself (the run row's times) and the rest."""
    posted_at = datetime.now(UTC)
    started = time.perf_counter()
    status, created = api(slm, token, "POST", "/api/v1/deployments", {"nodes": [node_id], "roles": ["redis"]})
    if status != 201:
        raise RuntimeError(f"POST /api/v1/deployments answered {status}: {created}")
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while time.monotonic() < deadline:
        status, detail = api(slm, token, "GET", f"/api/v1/deployments/{created['id']}")
        if status == 200 and detail["status"] not in ("queued", "running"):
            elapsed = time.perf_counter() - started
            if detail["status"] != "succeeded":
                raise RuntimeError(f"the deployment ended {detail['status']}: {detail['runs']}")
            run = detail["runs"][-1]
            run_started = datetime.fromisoformat(run["started_at"])
            run_finished = datetime.fromisoformat(run["finished_at"])
            queued = (run_started - posted_at).total_seconds()
            running = (run_finished - run_started).total_seconds()
            detail["_phases"] = {"queued": queued, "run": running, "rest": elapsed - queued - running}
            return elapsed, detail
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"the deployment did not end within {RUN_WAIT_SECONDS} s")


# --- the plain side --------------------------------------------------------------------------------------


def deploy_plain(host, setup: dict, private_key: bytes, work_dir: Path) -> tuple[float, dict]:
    """ansible-playbook with what the SLM's adapter builds for the same run (not through ansible-runner)."""
    from slm_project.deployments.runners import ansible as adapter

    ansible_dir = REPO_DIR / "ansible"
    run = adapter.PlaybookRun(
        ident="plain",
        playbook="deploy.yml",
        hosts=(
            adapter.TargetHost(
                name=setup["node_name"],
                address=host.address,
                port=host.port,
                user=host.user,
                host_key=host.host_public_key,
                groups=("redis",),
                variables={"slm_node_id": setup["node_id"]},
            ),
        ),
        private_key=private_key,
        ansible_dir=ansible_dir,
        timeout_seconds=RUN_WAIT_SECONDS,
        secret_extra_vars={"redis_password": setup["redis_password"]},
    )
    directory = adapter.build_private_data_dir(run, base_dir=work_dir)
    try:
        env = {**os.environ, **adapter.ansible_environment(run, directory)}
        started = time.perf_counter()
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                "-i",
                str(directory / "inventory" / "hosts.json"),
                "-e",
                f"@{directory / 'env' / 'extravars'}",
                str(adapter.playbook_path(run)),
            ],
            cwd=ansible_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_WAIT_SECONDS,
            check=False,
        )
        elapsed = time.perf_counter() - started
    finally:
        adapter.stop_ssh_masters(directory)
        adapter.kill_leftover_processes(directory)
        adapter.remove_private_data_dir(directory)
    if result.returncode != 0:
        raise RuntimeError(f"ansible-playbook failed ({result.returncode}):\n{result.stdout[-3000:]}")
    recap = result.stdout[result.stdout.rfind("PLAY RECAP") :].splitlines()[1:2]
    return elapsed, {"recap": recap[0].split(":", 1)[-1].split() if recap else []}


# --- the benchmark ---------------------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    say(f"# {BENCHMARK}: deploy.yml (redis role) via the SLM and via ansible-playbook, {args.rounds} rounds")
    say(f"goal: {GOAL}; load average before set-up: {load_average()}")
    slm_times: list[float] = []
    plain_times: list[float] = []
    slm_phases: list[dict[str, float]] = []
    with ExitStack() as cleanup:
        var_dir = make_var_dir("autobot-bench-deploy-")
        cleanup.callback(remove_dir, var_dir)
        # Short: the SSH control sockets inside must stay under 108 bytes (see execution.run_work_dir).
        work_dir = make_var_dir("abd-")
        cleanup.callback(remove_dir, work_dir)
        started = time.monotonic()
        host = start_isolated_host(cleanup, var_dir)
        took = time.monotonic() - started
        say(f"isolated host: {host.address}:{host.port} in netns {host.name} ({took:.1f} s)")

        database = ThrowawayDatabase(var_dir=var_dir).create()
        cleanup.callback(database.drop)
        if database.engine != "postgresql":
            raise SystemExit("this benchmark needs PostgreSQL (AUTOBOT_BENCH_POSTGRES_URL): no answer")
        slm = SlmInstance(database_url=database.url, var_dir=var_dir, workers=2, threads=4)
        broker = free_redis_db(cleanup)
        base_env = slm.env

        def env() -> dict[str, str]:
            return {**base_env(), "SLM_CELERY_BROKER_URL": broker, "SLM_DEPLOYMENTS_WORK_DIR": str(work_dir)}

        slm.env = env  # type: ignore[method-assign] - the broker and work dir of this benchmark
        slm.manage("migrate", "--noinput", "-v0")
        key_file = var_dir / "slm_key"
        setup = json.loads(
            slm.python(
                "-c",
                SETUP_SCRIPT,
                host.address,
                str(host.port),
                host.user,
                host.host_public_key,
                host.host_key_fingerprint,
                str(key_file),
            ).stdout.splitlines()[-1]
        )
        host.authorize(setup["public_key"])
        private_key = key_file.read_bytes()
        say(f"database {database.name}, broker {broker}, node {setup['node_name']} online, host key pinned")

        cleanup.callback(slm.stop)
        slm.start()
        worker = start_worker(slm, var_dir)
        cleanup.callback(stop_process_group, worker)
        say(f"run work dir: {work_dir}; var dir: {var_dir}")
        say(f"SLM web: gunicorn gthread 2x4 at {slm.url}; Celery worker pid {worker.pid} (concurrency 1)")
        say(f"set-up done in {time.monotonic() - started:.1f} s")

        try:
            first, detail = deploy_via_slm(slm, token=setup["token"], node_id=setup["node_id"])
            run = detail["runs"][-1]
            say(f"first deploy via the SLM (not counted): {first:.2f} s, stats {run['host_stats']}")
            first, plain = deploy_plain(host, setup, private_key, work_dir)
            say(f"first plain run (not counted): {first:.2f} s, recap {plain['recap']}")
            for index in range(1, args.rounds + 1):
                # Alternate which side goes first, so that drift in the machine's load hits both alike.
                order = ("slm", "plain") if index % 2 else ("plain", "slm")
                line = []
                for side in order:
                    if side == "slm":
                        seconds, detail = deploy_via_slm(slm, token=setup["token"], node_id=setup["node_id"])
                        run = detail["runs"][-1]
                        stats = run["host_stats"].get(setup["node_name"], {})
                        phases = detail["_phases"]
                        slm_times.append(seconds)
                        slm_phases.append(phases)
                        line.append(
                            f"SLM {seconds:6.2f} s (queued {phases['queued']:.2f} + run {phases['run']:.2f}"
                            f" + rest {phases['rest']:.2f}; events {run['events_stored']}/"
                            f"{run['events_emitted']}; ok={stats.get('ok')} changed={stats.get('changed')})"
                        )
                    else:
                        seconds, plain = deploy_plain(host, setup, private_key, work_dir)
                        plain_times.append(seconds)
                        line.append(f"plain {seconds:6.2f} s ({' '.join(plain['recap'][:2])})")
                say(f"round {index}/{args.rounds}: {';  '.join(line)}  (load {load_average()})")
        except Exception:
            say(f"worker log (tail):\n{(var_dir / 'worker.log').read_text(errors='replace')[-3000:]}")
            raise
        say(f"load average after the rounds: {load_average()}")

    slm_median, plain_median = median(slm_times), median(plain_times)
    added = slm_median - plain_median
    ratio = slm_median / plain_median
    goal_met = ratio <= GOAL_RATIO and added <= GOAL_ADDED_SECONDS
    phases = {key: round(median([item[key] for item in slm_phases]), 3) for key in ("queued", "run", "rest")}
    say(
        f"SLM side, medians: {phases['queued']:.2f} s from the POST to the claim, {phases['run']:.2f} s "
        f"from the claim to the end written, {phases['rest']:.2f} s until the client saw it "
        f"(poll every {POLL_SECONDS} s)"
    )
    say(
        f"result: SLM median {slm_median:.2f} s, plain median {plain_median:.2f} s: {added:+.2f} s added, "
        f"ratio {ratio:.3f}; goal {'met' if goal_met else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "benchmark": BENCHMARK,
                "figure": round(added, 3),
                "unit": "s added at the median",
                "goal": GOAL,
                "baseline": round(plain_median, 3),
                "ratio": round(ratio, 4),
                "slm_median_s": round(slm_median, 3),
                "slm_runs": [round(value, 3) for value in slm_times],
                "plain_runs": [round(value, 3) for value in plain_times],
                "slm_phases_median_s": phases,
                "goal_met": goal_met,
                "playbook": "deploy.yml (common + redis roles)",
                "loadavg": load_average(),
            },
            ensure_ascii=False,
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
