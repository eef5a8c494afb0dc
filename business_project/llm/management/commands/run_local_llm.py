"""Run the embedded model server (the Procfile's ``llm-local``): llama.cpp's OpenAI-compatible server
with the packaged Gemma 3 270M GGUF, on ``LLM_LOCAL_HOST:LLM_LOCAL_PORT`` (127.0.0.1:8080).

The command replaces itself with the server process (``exec``), so the supervisor's signals reach the
server. With ``LLM_LOCAL_ENABLED=false`` (another provider is configured) it stays idle until stopped,
since the supervisor stops everything when one process exits.
"""

from __future__ import annotations

import os
import signal
import socket

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from business_project.llm import local_model


def _idle() -> None:
    """Wait until a signal ends the process (the supervisor stops everything when one process exits)."""
    while True:
        signal.pause()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the server will: connections of a previous run in TIME_WAIT do not make the port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Command(BaseCommand):
    help = "Start llama.cpp's OpenAI-compatible server with the packaged default model (exec)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="LLM_LOCAL_HOST (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=None, help="LLM_LOCAL_PORT (default 8080)")

    def handle(self, *args, host: str | None, port: int | None, **options) -> None:
        if not settings.LLM_LOCAL_ENABLED:
            self.stdout.write("The embedded model server is off (LLM_LOCAL_ENABLED=false); idle.")
            self.stdout.flush()
            _idle()
        try:
            model = local_model.model_path()
        except (ImproperlyConfigured, OSError, ValueError) as exc:
            raise CommandError(f"the embedded model cannot start: {exc}") from None
        host = host or settings.LLM_LOCAL_HOST
        port = port or settings.LLM_LOCAL_PORT
        if not _port_free(host, port):
            # Exiting would make the supervisor stop every other process; the app keeps running and the
            # provider's health checks show that it is not answering.
            self.stderr.write(
                f"The embedded model server is not started: {host}:{port} is in use. "
                "Set LLM_LOCAL_PORT to a free port (or LLM_LOCAL_ENABLED=false) and restart."
            )
            self.stderr.flush()
            _idle()
        command = local_model.server_command(host=host, port=port, model=model)
        self.stdout.write(f"Starting the embedded model server: {model.name} on http://{host}:{port}/v1")
        self.stdout.flush()
        os.execv(command[0], command)  # noqa: S606 - our own interpreter, an argument list, no shell
