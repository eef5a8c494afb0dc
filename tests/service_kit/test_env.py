import os
import stat

import pytest
from django.core.exceptions import ImproperlyConfigured

from service_kit.env import ProjectEnv, persistent_secret_key


@pytest.fixture
def env(monkeypatch):
    for name in ("XSVC_COLOR", "COLOR", "XSVC_DATABASE_URL", "DATABASE_URL", "XSVC_PORT", "PORT"):
        monkeypatch.delenv(name, raising=False)
    return ProjectEnv(prefix="XSVC_")


def test_the_prefixed_name_wins(env, monkeypatch):
    monkeypatch.setenv("COLOR", "blue")
    assert env.str("COLOR") == "blue"
    monkeypatch.setenv("XSVC_COLOR", "red")
    assert env.str("COLOR") == "red"


def test_a_missing_value_names_both_spellings(env):
    with pytest.raises(ImproperlyConfigured, match=r"XSVC_COLOR \(or COLOR\)"):
        env.str("COLOR")


def test_a_malformed_value_is_named(env, monkeypatch):
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(ImproperlyConfigured, match=r"XSVC_PORT \(or PORT\) is malformed"):
        env.int("PORT")


def test_require_lists_every_missing_variable(env, monkeypatch):
    monkeypatch.setenv("XSVC_COLOR", "red")
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env.require("COLOR", "DATABASE_URL", "PORT")
    assert "XSVC_DATABASE_URL (or DATABASE_URL)" in str(excinfo.value)
    assert "XSVC_PORT (or PORT)" in str(excinfo.value)
    assert "COLOR (or" not in str(excinfo.value).replace("DATABASE_URL (or", "")


@pytest.mark.parametrize("url", ["not a url", "mysqlx://host/db"])
def test_a_bad_database_url_is_named(env, monkeypatch, url):
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL"):
        env.database(default="sqlite:///x")


def test_postgres_urls_use_psycopg(env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/name")
    config = env.database(default="sqlite:///x")
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert config["NAME"] == "name"


def test_the_generated_secret_key_is_private_and_stable(tmp_path):
    path = tmp_path / "sub" / "secret_key"
    first = persistent_secret_key(path)
    assert len(first) >= 50
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert persistent_secret_key(path) == first
    assert list(path.parent.iterdir()) == [path]
