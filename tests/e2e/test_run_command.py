"""The README's run command, end to end: `make run` on an empty var dir brings up all six processes;
both web processes answer; the business app reaches the SLM through the contract client with the API
token `make run` made for it; the first admin logs into the SLM ops portal; Ctrl-C (SIGINT to the
foreground process group) stops everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import websockets

from tests.fixtures.live_slm import free_port, wait_for_http

REPO_DIR = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "e2e-operator-passphrase-42"
READY_MARKERS = (
    r"slm-web\.1\s+\|.*Listening at",
    r"slm-worker\.1\s+\|.*slm@\S+ ready\.",
    r"slm-beat\.1\s+\|.*beat: Starting",
    r"business-web\.1\s+\|.*Uvicorn running",
    r"business-worker\.1\s+\|.*business@\S+ ready\.",
    r"business-beat\.1\s+\|.*beat: Starting",
    r"llm-local\.1\s+\|.*Uvicorn running",
)

pytestmark = pytest.mark.e2e


class RunCommand:
    def __init__(self, tmp_path: Path) -> None:
        self.slm_port = free_port()
        self.business_port = free_port()
        self.llm_port = free_port()
        self.log_path = tmp_path / "make-run.log"
        self.var_dir = tmp_path / "var"
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("SLM_", "BUSINESS_", "DJANGO_", "AUTOBOT_", "PYTEST_"))
            and name not in {"REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY"}
        }
        env |= {
            "VAR_DIR": str(self.var_dir),
            "SLM_PORT": str(self.slm_port),
            "BUSINESS_PORT": str(self.business_port),
            "LLM_LOCAL_PORT": str(self.llm_port),
            "ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                ["make", "run"],
                cwd=REPO_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, like a terminal's foreground job
            )

    @property
    def slm(self) -> str:
        return f"http://127.0.0.1:{self.slm_port}"

    @property
    def business(self) -> str:
        return f"http://127.0.0.1:{self.business_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_markers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            missing = [marker for marker in READY_MARKERS if not re.search(marker, log)]
            if not missing:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"processes not up: {missing}\n{self.log()[-6000:]}")

    def interrupt(self) -> int:
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def admin_login(base_url: str, cookie_prefix: str) -> requests.Response:
    session = requests.Session()
    login_url = f"{base_url}/admin/login/?next=/admin/"
    session.get(login_url, timeout=10).raise_for_status()
    token = session.cookies[f"{cookie_prefix}csrftoken"]
    response = session.post(
        login_url,
        data={
            "username": "admin",
            "password": ADMIN_PASSWORD,
            "csrfmiddlewaretoken": token,
            "next": "/admin/",
        },
        headers={"Referer": login_url},
        timeout=10,
    )
    response.raise_for_status()
    return response


def websocket_probe(url: str, origin: str) -> dict:
    async def run():
        async with websockets.connect(url, origin=origin, open_timeout=10) as socket:
            return json.loads(await asyncio.wait_for(socket.recv(), 10))

    return asyncio.run(run())


@pytest.fixture
def run_command(tmp_path):
    command = RunCommand(tmp_path)
    try:
        yield command
    finally:
        command.kill()


def test_make_run_brings_up_the_whole_system_and_ctrl_c_stops_it(run_command):
    wait_for_http(f"{run_command.slm}/healthz", timeout=300, process=run_command.process)
    wait_for_http(f"{run_command.business}/healthz", timeout=60, process=run_command.process)
    run_command.wait_for_markers(timeout=120)
    assert "Created admin user 'admin'." in run_command.log()
    # The embedded model server is up and registered as the business app's default LLM provider.
    local_provider = f"LLM provider 'local' (openai, http://127.0.0.1:{run_command.llm_port}) created"
    assert local_provider in run_command.log()
    assert ADMIN_PASSWORD not in run_command.log()

    ready = requests.get(f"{run_command.business}/readyz", timeout=30).json()
    assert ready["status"] == "ready", ready
    assert ready["info"]["slm"]["reachable"] is True
    assert ready["info"]["slm"]["url"] == run_command.slm
    # make run created the business app's SLM API client and handed its token over in a 0600 file,
    # never through the output.
    assert ready["info"]["slm"]["token"] == "accepted", ready
    token_file = run_command.var_dir / "business" / "slm_api_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert "Created the SLM API client 'business'" in run_command.log()
    assert token_file.read_text().strip() not in run_command.log()
    assert requests.get(f"{run_command.slm}/readyz", timeout=30).json()["status"] == "ready"

    portal = admin_login(run_command.slm, "slm_")
    assert portal.url == f"{run_command.slm}/admin/"
    assert "AutoBot SLM" in portal.text
    assert 'name="password"' not in portal.text  # not bounced back to the login form

    business_admin = admin_login(run_command.business, "autobot_")
    assert business_admin.url == f"{run_command.business}/admin/"

    origin = run_command.business
    probe = websocket_probe(f"ws://127.0.0.1:{run_command.business_port}/ws/healthz/", origin)
    assert probe == {"status": "ok", "channel_layer": "ok"}

    run_command.interrupt()
    deadline = time.monotonic() + 30
    while group_alive(run_command.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(run_command.process.pid), "processes survived Ctrl-C"
    for port in (run_command.slm_port, run_command.business_port, run_command.llm_port):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def make_env(var_dir: Path) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SLM_", "BUSINESS_", "DJANGO_", "AUTOBOT_", "PYTEST_", "MAKE"))
    }
    return env | {"VAR_DIR": str(var_dir)}


def test_the_token_hand_over_runs_once_and_says_what_to_do_when_the_file_is_gone(tmp_path):
    env = make_env(tmp_path / "var")
    subprocess.run(
        [sys.executable, "manage_slm.py", "migrate", "--noinput", "-v0"],
        cwd=REPO_DIR,
        env=env,
        check=True,
        timeout=300,
    )
    token_file = tmp_path / "var" / "business" / "slm_api_token"

    def hand_over() -> str:
        result = subprocess.run(
            ["make", "--no-print-directory", "slm-api-token"],
            cwd=REPO_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    output = hand_over()
    token = token_file.read_text().strip()
    assert token.startswith("slm_")
    assert token not in output
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    assert f"reads {token_file}" in hand_over()
    assert token_file.read_text().strip() == token  # kept, not replaced

    token_file.unlink()
    output = hand_over()
    assert "has an API client 'business' already" in output
    assert "SLM_API_TOKEN" in output
    assert not token_file.exists()
