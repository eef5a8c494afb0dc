"""Fixtures shared by the business tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.fixtures.live_slm import base_process_env, free_port, wait_for_http

REPO_DIR = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 180


@pytest.fixture(scope="session")
def local_llm_server(tmp_path_factory):
    """The embedded model's server (``manage_business.py run_local_llm``, as the Procfile's ``llm-local``
    runs it) on a free port, once per test session: loading the model takes seconds."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("local-llm") / "server.log"
    env = base_process_env() | {
        "DJANGO_SETTINGS_MODULE": "business_project.config.settings.test",
        # The test run's var dir: the assembled GGUF is kept there for the next run.
        "BUSINESS_VAR_DIR": str(Path(settings.LLM_LOCAL_MODEL_DIR).parents[1]),
        "BUSINESS_LLM_LOCAL_PORT": str(port),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "manage_business.py", "run_local_llm"],
            cwd=REPO_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        try:
            wait_for_http(
                f"http://127.0.0.1:{port}/v1/models", timeout=START_TIMEOUT_SECONDS, process=process
            )
        except (TimeoutError, RuntimeError) as exc:
            pytest.fail(f"the embedded model server did not start: {exc}\n{log_path.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
