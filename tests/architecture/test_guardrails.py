"""The guardrails of the test command run there, and each one fails when the code breaks its rule."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.architecture.conftest import BIN_DIR, REPO_DIR

PROJECTS = [
    ("manage_slm.py", "slm_project", "SLM_VAR_DIR"),
    ("manage_business.py", "business_project", "BUSINESS_VAR_DIR"),
]


def test_the_test_command_runs_every_guardrail():
    makefile = (REPO_DIR / "Makefile").read_text()
    target = re.search(r"^test: (.+)$", makefile, re.MULTILINE).group(1).split()
    assert {"guardrails", "test-slm", "test-business"} <= set(target)
    for command in (
        "ruff check .",
        "ruff format --check .",
        "lint-imports",
        "manage_slm.py check",
        "manage_business.py check",
        "manage_slm.py makemigrations --check",
        "manage_business.py makemigrations --check",
        "manage_slm.py spectacular --validate --fail-on-warn",
        "manage_business.py spectacular --validate --fail-on-warn",
        "tests/architecture",
    ):
        assert command in makefile, command


def ruff(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN_DIR / "ruff"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_ruff_fails_on_a_lint_error(repo_copy):
    (repo_copy / "service_kit" / "careless.py").write_text("import os\n\n\ndef f():\n    return eval('1')\n")
    result = ruff("check", ".", cwd=repo_copy)
    assert result.returncode != 0
    assert "F401" in result.stdout
    assert "S307" in result.stdout


def test_ruff_format_fails_on_unformatted_code(repo_copy):
    (repo_copy / "service_kit" / "messy.py").write_text("x = {  'a':1 }\n")
    assert ruff("format", "--check", ".", cwd=repo_copy).returncode != 0


def manage(repo: Path, manage_py: str, package: str, var_env: str, *args: str, tmp_path: Path):
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SLM_", "BUSINESS_", "DJANGO_"))
    }
    env |= {"DJANGO_SETTINGS_MODULE": f"{package}.config.settings.test", var_env: str(tmp_path / "var")}
    return subprocess.run(
        [sys.executable, manage_py, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize(("manage_py", "package", "var_env"), PROJECTS)
def test_makemigrations_check_fails_on_a_model_change_without_migration(
    repo_copy, tmp_path, manage_py, package, var_env
):
    args = ("makemigrations", "--check", "--dry-run")
    clean = manage(repo_copy, manage_py, package, var_env, *args, tmp_path=tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    models = repo_copy / package / "accounts" / "models.py"
    models.write_text(
        models.read_text().replace(
            "    class Meta(AbstractUser.Meta):",
            "    nickname = models.CharField(max_length=40)\n\n    class Meta(AbstractUser.Meta):",
        )
    )
    changed = manage(repo_copy, manage_py, package, var_env, *args, tmp_path=tmp_path)
    assert changed.returncode != 0
    assert "nickname" in changed.stdout


@pytest.mark.parametrize(("manage_py", "package", "var_env"), PROJECTS)
def test_check_fails_on_a_broken_model(repo_copy, tmp_path, manage_py, package, var_env):
    models = repo_copy / package / "accounts" / "models.py"
    models.write_text(
        models.read_text().replace(
            "    class Meta(AbstractUser.Meta):",
            "    balance = models.DecimalField()\n\n    class Meta(AbstractUser.Meta):",
        )
    )
    result = manage(repo_copy, manage_py, package, var_env, "check", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "fields.E130" in result.stderr
