"""The service's configuration: one JSON file (written by the ``ai_stack`` Ansible role), read and checked
once at start-up: an unknown key or a wrong type stops the service with a message naming it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

# espeak-ng voice names as its --voices lists them ("en-us", "fr-fr", "en-gb-x-rp"); they become a
# program argument, so nothing else is accepted even from the config file.
VOICE_PATTERN = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{1,8})*$")


class ConfigError(Exception):
    """The config file is missing, unreadable or wrong; the message says what."""


@dataclass(frozen=True)
class Config:
    bind: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "/var/lib/autobot/ai-stack"
    max_body_bytes: int = 16 * 1024 * 1024
    # Vector store limits, per request.
    max_dimensions: int = 4096
    max_points_per_request: int = 1000
    max_top_k: int = 100
    max_metadata_bytes: int = 8192  # per point, as compact JSON
    # Speech synthesis.
    espeak: str = "/usr/bin/espeak-ng"
    tts_voices: tuple[str, ...] = ("en-us", "en-gb", "de", "es", "fr-fr", "it", "nl", "pl", "pt")
    tts_default_voice: str = "en-us"
    tts_max_chars: int = 2000
    tts_timeout_seconds: float = 30.0
    tts_max_concurrency: int = 2  # espeak-ng processes at a time; more requests wait
    queue_timeout_seconds: float = 30.0  # ... at most this long (then 503 busy)

    @property
    def database(self) -> Path:
        return Path(self.data_dir) / "vectors.sqlite3"


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
        if name == "tts_voices":
            if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{source}: tts_voices must be a non-empty list of voice names")
            value = tuple(value)
        elif expected == "int":
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
    bad = [voice for voice in config.tts_voices if not VOICE_PATTERN.match(voice)]
    if bad:
        raise ConfigError(f"{source}: tts_voices has names espeak-ng does not use: {bad}")
    if config.tts_default_voice not in config.tts_voices:
        raise ConfigError(f"{source}: tts_default_voice {config.tts_default_voice!r} is not in tts_voices")
    return config
