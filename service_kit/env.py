"""Reading a deployable's environment (django-environ), in one place per project.

Each project reads plain names (``DATABASE_URL``, ``SECRET_KEY`` …), as a container gets them, but a
project-prefixed name wins when both are set (``SLM_DATABASE_URL`` over ``DATABASE_URL``). That lets
one shell or one ``.env`` run both deployables side by side (``make run``) without either reading the
other's database.
"""

from __future__ import annotations

import os
import secrets
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

SUPPORTED_DATABASE_ENGINES = frozenset({"django.db.backends.postgresql", "django.db.backends.sqlite3"})


class ProjectEnv(environ.Env):
    def __init__(self, prefix: str, **scheme: Any) -> None:
        super().__init__(**scheme)
        self.project_prefix = prefix

    def names_for(self, var: str) -> str:
        """How an error message names a variable: ``SLM_SECRET_KEY (or SECRET_KEY)``."""
        return f"{self.project_prefix}{var} (or {var})"

    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):
        prefixed = f"{self.project_prefix}{var}"
        name = self.names_for(var)
        if prefixed in self.ENVIRON:
            var = prefixed
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except ImproperlyConfigured as exc:
            raise ImproperlyConfigured(f"{exc} — set {name}") from exc
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"{name} is malformed: {exc}") from exc

    def is_set(self, var: str) -> bool:
        return bool(self.ENVIRON.get(f"{self.project_prefix}{var}") or self.ENVIRON.get(var))

    def require(self, *variables: str) -> None:
        """Fail start-up, naming every missing variable at once."""
        missing = [self.names_for(var) for var in variables if not self.is_set(var)]
        if missing:
            raise ImproperlyConfigured("Required environment variables are not set: " + ", ".join(missing))

    def database(self, var: str = "DATABASE_URL", *, default: str) -> dict[str, Any]:
        """A parsed database URL; only the engines AutoBot runs on (PostgreSQL, SQLite) are accepted."""
        url = self.str(var, default=default)
        try:
            with warnings.catch_warnings():
                # django-environ only warns about an unknown scheme; we refuse it below instead.
                warnings.simplefilter("ignore", UserWarning)
                config = environ.Env.db_url_config(url)
        except Exception as exc:  # django-environ raises several types for a bad URL
            raise ImproperlyConfigured(f"{self.names_for(var)} is not a database URL: {exc}") from None
        if config.get("ENGINE") not in SUPPORTED_DATABASE_ENGINES:
            raise ImproperlyConfigured(f"{self.names_for(var)} must be a postgres:// or sqlite:// URL")
        return config

    def read_env_file(self, path: Path) -> None:
        """Load ``path`` (a ``.env`` file) when it exists; real environment variables win over it."""
        if path.is_file():
            environ.Env.read_env(str(path), overwrite=False)


def persistent_secret_file(path: Path, make: Callable[[], str]) -> str:
    """The content of a private file made once per installation (0600, created atomically).

    For secrets the single-machine ``make run`` generates when none is configured; production settings
    require the variables instead. Two processes starting at once agree on one file: ``link()`` refuses
    to replace a file another process already put in place. A file others can read is refused.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        pass
    else:
        if stat.S_IMODE(mode) & 0o077:
            raise ImproperlyConfigured(f"{path} is readable by other users; chmod 600 it")
        return path.read_text()
    content = make()
    staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    try:
        os.link(staging, path)
    except FileExistsError:
        content = path.read_text()
    finally:
        staging.unlink()
    return content


def persistent_secret_key(path: Path) -> str:
    """A Django secret key made once per installation, when no ``SECRET_KEY`` is configured."""
    return persistent_secret_file(path, lambda: secrets.token_urlsafe(50)).strip()
