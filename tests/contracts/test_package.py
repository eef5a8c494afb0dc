"""shared_contracts installs on its own and stays free of Django and the SSH/Ansible libraries."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]


def test_importing_the_client_pulls_in_no_framework():
    code = (
        "import sys, shared_contracts.client, shared_contracts.errors, shared_contracts.schemas.common;"
        "bad = sorted(m for m in ('django', 'rest_framework', 'celery', 'channels', 'paramiko',"
        " 'ansible_runner', 'slm_project', 'business_project', 'service_kit') if m in sys.modules);"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""


def test_it_builds_as_a_wheel_holding_only_the_contract(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(REPO_DIR / "shared_contracts"),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("autobot_shared_contracts-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("client.py", "errors.py", "version.py", "paths.py", "schemas/common.py", "py.typed"):
        assert f"shared_contracts/{module}" in names
    assert not any(name.startswith(("slm_project", "business_project", "service_kit")) for name in names)
    assert not any("pyproject" in name for name in names)
