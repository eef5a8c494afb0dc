"""Business production settings refuse to start without the SLM connection and the usual values."""

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.fixtures.live_slm import base_process_env
from tests.fixtures.services import in_ci

REPO_DIR = Path(__file__).resolve().parents[3]

VALID = {
    "SECRET_KEY": "y" * 50,
    "DATABASE_URL": "postgres://autobot:pw@db.invalid:5432/autobot_business",
    "REDIS_URL": "redis://redis.invalid:6379/1",
    "ALLOWED_HOSTS": "autobot.example.org",
    "SLM_API_URL": "http://slm.invalid:8001",
    "SLM_API_TOKEN": "token-from-create-api-client",
    "MASTER_KEYS": "k1:" + "A" * 43 + "=",
}


def run_check(env, tmp_path):
    process_env = base_process_env() | {
        "DJANGO_SETTINGS_MODULE": "business_project.config.settings.production",
        "BUSINESS_VAR_DIR": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, "manage_business.py", "check"],
        cwd=REPO_DIR,
        env=process_env | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_starts_with_every_required_value(tmp_path):
    result = run_check(VALID, tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "missing", ["SLM_API_URL", "SLM_API_TOKEN", "SECRET_KEY", "REDIS_URL", "MASTER_KEYS"]
)
def test_production_names_the_missing_variable(tmp_path, missing):
    env = {name: value for name, value in VALID.items() if name != missing}
    result = run_check(env, tmp_path)
    assert result.returncode != 0
    assert f"BUSINESS_{missing} (or {missing})" in result.stderr
    assert "token-from-create-api-client" not in result.stderr


def test_ci_runs_the_suite_on_postgresql_and_redis():
    if not in_ci():
        pytest.skip("outside CI the suite may run on SQLite and local-memory parts")
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"


def test_production_takes_the_slm_token_from_a_file(tmp_path):
    token_file = tmp_path / "slm_token"
    token_file.write_text("token-from-a-secret-file\n")
    env = {name: value for name, value in VALID.items() if name != "SLM_API_TOKEN"}
    result = run_check(env | {"SLM_API_TOKEN_FILE": str(token_file)}, tmp_path)
    assert result.returncode == 0, result.stderr
    missing = run_check(env | {"SLM_API_TOKEN_FILE": str(tmp_path / "absent")}, tmp_path)
    assert missing.returncode != 0
    assert "BUSINESS_SLM_API_TOKEN_FILE (or SLM_API_TOKEN_FILE)" in missing.stderr
