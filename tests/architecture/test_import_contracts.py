"""The dependency rules of DESIGN.md hold in the code (import-linter), and each rule fails when broken."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.architecture.conftest import BIN_DIR, REPO_DIR


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN_DIR / "lint-imports"), "--no-cache"],
        cwd=root,
        env=os.environ | {"PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_repository_keeps_every_contract():
    result = lint_imports(REPO_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _write(root: Path, module: str, source: str) -> None:
    path = root / (module.replace(".", "/") + ".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(root).parents:
        if str(parent) != ".":
            (root / parent / "__init__.py").touch()
    with path.open("a") as handle:
        handle.write("\n" + source + "\n")


VIOLATIONS = [
    (
        "The two deployables never import each other",
        {"business_project.system.selectors": "import slm_project.system.views"},
    ),
    (
        "shared_contracts is pure Python",
        {"shared_contracts.schemas.fleet": "from django.db import models"},
    ),
    (
        "shared_contracts is pure Python",
        {"shared_contracts.schemas.fleet": "import celery"},
    ),
    (
        "The business layer never SSHes or runs Ansible",
        {"business_project.system.services": "import paramiko"},
    ),
    (
        "The business layer never SSHes or runs Ansible",
        {"business_project.system.services": "import ansible_runner"},
    ),
    (
        "Inside the SLM only the adapter modules (runners/) import paramiko and ansible_runner",
        {"slm_project.system.services": "import paramiko"},
    ),
    (
        "Inside the business project only the SLM gateway uses SlmClient",
        {"business_project.system.services": "from shared_contracts.client import SlmClient"},
    ),
    (
        "SLM apps are layered",
        {"slm_project.system.models": "from slm_project.system.api import views"},
    ),
    (
        "Business apps do not form import cycles",
        {
            "business_project.accounts.selectors": "import business_project.system.services",
            "business_project.system.services": "import business_project.accounts.models",
        },
    ),
    (
        "service_kit is shared plumbing",
        {"service_kit.probes": "import slm_project"},
    ),
    (
        "The worker services run on their own nodes",
        {"workers.jsonapi": "import django"},
    ),
]


@pytest.mark.parametrize(("contract", "modules"), VIOLATIONS, ids=[v[0][:40] for v in VIOLATIONS])
def test_each_rule_fails_when_broken(repo_copy, contract, modules):
    for module, source in modules.items():
        _write(repo_copy, module, source)
    result = lint_imports(repo_copy)
    assert result.returncode != 0
    # import-linter wraps long names: compare with whitespace normalised.
    broken_section = " ".join(result.stdout.split("Broken contracts")[-1].split())
    assert contract in broken_section, result.stdout


def test_the_ssh_adapter_may_import_paramiko(repo_copy):
    _write(repo_copy, "slm_project.fleet.runners.ssh", "import paramiko")
    _write(repo_copy, "slm_project.fleet.services", "from slm_project.fleet.runners import ssh")
    result = lint_imports(repo_copy)
    assert result.returncode == 0, result.stdout
