"""Every way the business web server is started (Procfile, compose.yaml, the Ansible backend role) runs
uvicorn the same way where it matters: without permessage-deflate on websockets. A chat delta is a frame
of ~100 bytes; compressing each one cost the server and the client more time than it saved bytes
(bench/chat_stream.py: per-delta overhead 0.86 → 0.58 ms at p50, 146 → 124 µs of CPU per token) and
kept a compressor per socket."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


def words(command: str | list[str]) -> list[str]:
    if isinstance(command, list):
        command = " ".join(command)
    return command.replace("=", " ").split()


def declines_deflate(command: str | list[str]) -> bool:
    parts = words(command)
    return any(
        part == "--ws-per-message-deflate" and parts[index + 1].lower() == "false"
        for index, part in enumerate(parts[:-1])
    )


def test_the_procfile_starts_uvicorn_without_permessage_deflate():
    lines = (REPO_ROOT / "Procfile").read_text().splitlines()
    command = next(line.split(":", 1)[1] for line in lines if line.startswith("business-web:"))
    assert "uvicorn" in command
    assert declines_deflate(command)


def test_compose_starts_uvicorn_without_permessage_deflate():
    services = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]
    command = services["business-web"]["command"]
    assert command[0] == "uvicorn"
    assert declines_deflate(command)


def test_the_backend_role_starts_uvicorn_without_permessage_deflate():
    variables = yaml.safe_load((REPO_ROOT / "ansible/roles/backend/vars/main.yml").read_text())
    command = variables["backend_commands"]["autobot-business-web"]
    assert "-m uvicorn" in command
    assert declines_deflate(command)


def test_the_check_reads_the_flag_and_its_value():
    assert declines_deflate("uvicorn app --ws-per-message-deflate false")
    assert declines_deflate(["uvicorn", "app", "--ws-per-message-deflate=false"])
    assert not declines_deflate("uvicorn app --ws-per-message-deflate true")
    assert not declines_deflate("uvicorn app --lifespan off")
