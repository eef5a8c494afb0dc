"""Settings: production refuses to start without what it needs; the test run uses the real services."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.fixtures.live_slm import base_process_env
from tests.fixtures.services import in_ci

REPO_DIR = Path(__file__).resolve().parents[3]

VALID_PRODUCTION_ENV = {
    "SECRET_KEY": "x" * 50,
    "DATABASE_URL": "postgres://autobot:pw@db.invalid:5432/autobot_slm",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "ALLOWED_HOSTS": "slm.example.org",
    "MASTER_KEYS": "k1:" + "A" * 43 + "=",
}


def run_check(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    process_env = base_process_env() | {
        "DJANGO_SETTINGS_MODULE": "slm_project.config.settings.production",
        "SLM_VAR_DIR": str(tmp_path),
    }
    process_env.update(env)
    return subprocess.run(
        [sys.executable, "manage_slm.py", "check"],
        cwd=REPO_DIR,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_starts_with_every_required_value(tmp_path):
    result = run_check(VALID_PRODUCTION_ENV, tmp_path)
    assert result.returncode == 0, result.stderr


def test_production_names_every_missing_variable(tmp_path):
    result = run_check({"ALLOWED_HOSTS": "slm.example.org"}, tmp_path)
    assert result.returncode != 0
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "MASTER_KEYS"):
        assert f"SLM_{name} (or {name})" in result.stderr
    assert "ALLOWED_HOSTS (or" not in result.stderr.split("ImproperlyConfigured")[-1]
    # Nothing was generated in place of the missing key.
    assert not (tmp_path / "slm" / "secret_key").exists()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DATABASE_URL", "not a url", "DATABASE_URL"),
        ("DATABASE_URL", "sqlite:////tmp/x.sqlite3", "must be a postgres:// URL"),
        ("SECRET_KEY", "short", "at least 32 characters"),
        ("DEBUG", "true", "must be off in production"),
    ],
)
def test_production_rejects_malformed_values_naming_them(tmp_path, variable, value, message):
    result = run_check(VALID_PRODUCTION_ENV | {variable: value}, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_prefixed_variable_wins_over_the_plain_one(tmp_path):
    env = VALID_PRODUCTION_ENV | {"DATABASE_URL": "sqlite:////tmp/x.sqlite3"}
    env["SLM_DATABASE_URL"] = VALID_PRODUCTION_ENV["DATABASE_URL"]
    assert run_check(env, tmp_path).returncode == 0


def test_ci_runs_the_suite_on_postgresql_and_redis():
    if not in_ci():
        pytest.skip("outside CI the suite may run on SQLite and local-memory parts")
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    assert os.environ["AUTOBOT_SLM_TEST_DATABASE_URL"]
