"""``ensure_default_provider`` (run by ``make run``) and ``run_local_llm`` (the Procfile's ``llm-local``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from business_project.llm import local_model
from business_project.llm.chain import provider_config
from business_project.llm.models import Provider
from tests.fixtures.live_slm import base_process_env

REPO_DIR = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.django_db


def ensure(**options) -> str:
    out = StringIO()
    call_command("ensure_default_provider", stdout=out, **options)
    return out.getvalue()


def test_the_embedded_server_is_registered_as_the_default_provider_once():
    first = ensure()
    second = ensure()

    provider = Provider.objects.get()
    assert (provider.name, provider.kind, provider.base_url) == ("local", "openai", "http://127.0.0.1:8080")
    assert provider.is_default
    assert provider.enabled
    assert not provider.has_api_key
    model = provider.models.get()
    assert (model.name, model.context_window, model.is_default) == ("gemma-3-270m", 4096, True)
    assert "created, the default" in first
    assert "up to date, the default" in second


def test_the_settings_point_it_at_ollama_and_the_admins_choices_stay(settings):
    ensure()
    Provider.objects.filter(name="local").update(priority=3, enabled=False)
    settings.LLM_DEFAULT_KIND = "ollama"
    settings.LLM_DEFAULT_BASE_URL = "http://127.0.0.1:11434"
    settings.LLM_DEFAULT_MODEL = "llama3.2"

    ensure()

    provider = Provider.objects.get()
    assert (provider.kind, provider.base_url, provider.priority, provider.enabled) == (
        "ollama",
        "http://127.0.0.1:11434",
        3,
        False,
    )
    assert sorted(provider.models.values_list("name", "is_default")) == [
        ("gemma-3-270m", True),
        ("llama3.2", False),
    ]


def test_another_default_provider_keeps_the_flag():
    Provider.objects.create(name="mine", base_url="http://127.0.0.1:9", is_default=True)

    output = ensure()

    assert "not the default" in output
    assert Provider.objects.get(is_default=True).name == "mine"


def test_an_api_key_from_the_settings_is_sealed_and_never_printed(settings):
    settings.LLM_DEFAULT_API_KEY = "sk-from-the-environment-123"

    output = ensure() + ensure()

    provider = Provider.objects.get()
    assert provider_config(provider).api_key == "sk-from-the-environment-123"
    changed_at = provider.api_key_changed_at
    assert "sk-from-the-environment" not in output
    ensure()
    provider.refresh_from_db()
    assert provider.api_key_changed_at == changed_at  # the same key is not sealed again
    settings.LLM_DEFAULT_API_KEY = "sk-rotated-456"
    ensure()
    assert provider_config(Provider.objects.get()).api_key == "sk-rotated-456"


@pytest.mark.parametrize(
    ("options", "message"),
    [({"base_url": "not a url"}, "Enter a valid URL"), ({"context_window": -1}, "positive")],
)
def test_bad_values_are_refused_and_nothing_is_written(options, message):
    with pytest.raises(CommandError, match=message):
        ensure(**options)
    assert not Provider.objects.exists()


def test_the_server_command_line_serves_the_model_on_loopback(settings, tmp_path):
    model = tmp_path / "m.gguf"
    command = local_model.server_command(host="127.0.0.1", port=8123, model=model)

    assert command[:3] == [sys.executable, "-m", "llama_cpp.server"]
    arguments = dict(zip(command[3::2], command[4::2], strict=True))
    assert arguments["--model"] == str(model)
    assert arguments["--model_alias"] == settings.LLM_LOCAL_MODEL_ALIAS == "gemma-3-270m"
    assert (arguments["--host"], arguments["--port"]) == ("127.0.0.1", "8123")
    assert arguments["--chat_format"] == "gemma"


def test_a_configured_model_path_that_is_missing_is_a_clear_error(settings, tmp_path):
    settings.LLM_LOCAL_MODEL_PATH = str(tmp_path / "missing.gguf")
    with pytest.raises(CommandError, match=r"missing\.gguf is not a file"):
        call_command("run_local_llm", stdout=StringIO())


def test_a_disabled_embedded_server_idles_until_stopped(tmp_path):
    env = base_process_env() | {
        "DJANGO_SETTINGS_MODULE": "business_project.config.settings.test",
        "BUSINESS_VAR_DIR": str(tmp_path),
        "BUSINESS_LLM_LOCAL_ENABLED": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "manage_business.py", "run_local_llm"],
        cwd=REPO_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "LLM_LOCAL_ENABLED=false" in line
        time.sleep(0.3)
        assert process.poll() is None  # still running: the supervisor would stop everything otherwise
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(10)
        process.stdout.close()


def test_a_port_in_use_leaves_the_embedded_server_idle_instead_of_stopping_everything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_process_env() | {
            "DJANGO_SETTINGS_MODULE": "business_project.config.settings.test",
            "BUSINESS_VAR_DIR": str(tmp_path),
            "BUSINESS_LLM_LOCAL_PORT": str(port),
        }
        process = subprocess.Popen(
            [sys.executable, "manage_business.py", "run_local_llm"],
            cwd=REPO_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            line = process.stdout.readline()
            assert f"127.0.0.1:{port} is in use" in line
            time.sleep(0.3)
            assert process.poll() is None
        finally:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(10)
            process.stdout.close()
