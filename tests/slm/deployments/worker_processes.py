"""Helpers of the executor tests: real Celery worker processes (which a test may kill -9), nodes at the
isolated test host made without SSH (the host key pinned as enrollment pins it), and waiting for runs.

A worker process runs ``celery -A slm_project worker`` with the test settings, against the test
database this test session made (not the one named in the URL: pytest-django's ``test_`` copy), the same
var dir (so the vault's master key) and the same broker. It runs in a session of its own, so that
``kill()`` takes the whole worker (``kill -9`` of its process group), as a crash or the OOM killer would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.db import connection

from slm_project.deployments.choices import FINISHED
from slm_project.deployments.models import DeploymentRun
from slm_project.deployments.runners import ansible
from slm_project.fleet import enrollment
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import NodeState, Trigger
from slm_project.fleet.models import Node
from slm_project.fleet.states import node_transition
from slm_project.security.choices import CredentialKind
from slm_project.security.services import credential_store
from tests.fixtures.live_slm import REPO_DIR, base_process_env
from tests.slm.fleet.factories import make_node

READY_TIMEOUT_SECONDS = 60
RUN_WAIT_SECONDS = 180


def test_database_url() -> str:
    """The URL of the database this test session uses (pytest-django's copy of the configured one)."""
    configured = os.environ["AUTOBOT_SLM_TEST_DATABASE_URL"]
    return urlunsplit(urlsplit(configured)._replace(path=f"/{connection.settings_dict['NAME']}"))


class WorkerProcess:
    """One ``celery worker`` process on the deployments (and default) queue, solo pool."""

    def __init__(self, name: str, log_dir: Path, *, work_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        self.work_dir = work_dir
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = base_process_env()
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "slm_project.config.settings.test",
                "SLM_VAR_DIR": os.environ["SLM_VAR_DIR"],
                "AUTOBOT_SLM_TEST_DATABASE_URL": test_database_url(),
                "AUTOBOT_SLM_TEST_REDIS_URL": os.environ.get("AUTOBOT_SLM_TEST_REDIS_URL", ""),
                "SLM_DEPLOYMENTS_WORK_DIR": str(self.work_dir),
            }
        )
        return env

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "slm_project",
                    "worker",
                    "--pool=solo",
                    "--concurrency=1",
                    "--queues=deployments,default",
                    f"--hostname={self.name}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel=INFO",
                ],
                cwd=REPO_DIR,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while b" ready." not in self.log_path.read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """``kill -9`` of the worker's process group (the worker and any child still in its group)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, size: int = 4000) -> str:
        return self.log_path.read_bytes()[-size:].decode(errors="replace")


def kill_processes_under(directory: Path) -> list[int]:
    """Teardown: end every process still naming ``directory`` (what a killed worker may leave)."""
    pids = ansible.processes_using(directory)
    ansible.kill_leftover_processes(directory)
    return pids


def node_at(isolated_host, *, name: str | None = None, agent_token: bool = False) -> Node:
    """A node at the isolated host, online with its real host key pinned (as enrollment leaves it,
    without the SSH round trips: ``test_deploy_e2e`` covers enrollment itself). The SLM's key is
    authorized on the host; ``agent_token`` seals a token the way enrollment does."""
    isolated_host.authorize(enrollment.slm_identity().public_key)
    overrides = {"name": name} if name else {}
    node = make_node(
        address=isolated_host.address, ssh_port=isolated_host.port, ssh_user=isolated_host.user, **overrides
    )
    key_type, key_base64 = isolated_host.host_public_key.split()[:2]
    fleet_services.node_host_key_capture(
        node=node,
        key_type=key_type,
        key_base64=key_base64,
        fingerprint=isolated_host.host_key_fingerprint,
        actor="user:test",
    )
    node.refresh_from_db()
    node = fleet_services.node_host_key_accept(
        node=node, fingerprint=isolated_host.host_key_fingerprint, actor="user:test"
    )
    for state in (NodeState.ENROLLING, NodeState.ONLINE):
        node = node_transition(node=node, to_state=state, trigger=Trigger.SYSTEM, actor="test")
    if agent_token:
        node.agent_token_credential = credential_store(
            kind=CredentialKind.API_TOKEN, name=f"agent-token:{node.name}", secret=os.urandom(24).hex()
        )
        node.save(update_fields=["agent_token_credential"])
    return node


def wait_for_end(run: DeploymentRun, *, timeout: float = RUN_WAIT_SECONDS) -> DeploymentRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in FINISHED:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run.pk} still {run.status} after {timeout} s: {run.status_reason}")
