"""The worker's configuration: one JSON file (written by the ``browser_worker`` Ansible role), read and
checked once at start-up: an unknown key or a wrong type stops the worker with a message naming it."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from workers.browser_worker.targets import normalize_allowed_host


class ConfigError(Exception):
    """The config file is missing, unreadable or wrong; the message says what."""


@dataclass(frozen=True)
class Config:
    # Hosts pages may be loaded from: names or addresses; "*.example.org" allows every subdomain of
    # example.org (not example.org itself). Any port of an allowed host.
    allowed_hosts: tuple[str, ...]
    bind: str = "127.0.0.1"
    port: int = 3000
    chromium: str = "/usr/bin/chromium"
    # Pages loaded at the same time (each in its own browser context); more requests wait for a slot for
    # at most queue_timeout_seconds, then get 503 busy.
    max_concurrency: int = 2
    queue_timeout_seconds: float = 10.0
    navigation_timeout_seconds: float = 15.0
    max_text_chars: int = 100_000
    viewport_width: int = 1280
    viewport_height: int = 800
    user_agent: str = ""  # empty: Chromium's own

    @property
    def request_timeout_seconds(self) -> float:
        """The most one request may take once it has a slot: the navigation plus reading the page."""
        return self.navigation_timeout_seconds + 10.0


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
    if "allowed_hosts" not in raw:
        raise ConfigError(f"{source}: allowed_hosts is required (an empty list allows nothing)")
    values: dict[str, object] = {}
    for name, value in raw.items():
        expected = known[name].type
        if name == "allowed_hosts":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{source}: allowed_hosts must be a list of host names")
            try:
                values[name] = tuple(normalize_allowed_host(item) for item in value)
            except ValueError as exc:
                raise ConfigError(f"{source}: allowed_hosts: {exc}") from None
        elif expected == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{source}: {name} must be a positive integer")
            values[name] = value
        elif expected == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{source}: {name} must be a positive number")
            values[name] = float(value)
        else:
            if not isinstance(value, str):
                raise ConfigError(f"{source}: {name} must be a string")
            values[name] = value
    config = Config(**values)  # type: ignore[arg-type]
    if config.port > 65535:
        raise ConfigError(f"{source}: port must be at most 65535")
    return config
