import shutil
import sys
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parents[2]
PACKAGES = ("slm_project", "business_project", "shared_contracts", "service_kit", "workers")
BIN_DIR = Path(sys.executable).parent


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """A throw-away copy of the code, to break on purpose and show that a guardrail notices."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for package in PACKAGES:
        shutil.copytree(REPO_DIR / package, tmp_path / package, ignore=ignore)
    for name in ("pyproject.toml", "manage_slm.py", "manage_business.py"):
        shutil.copy2(REPO_DIR / name, tmp_path / name)
    return tmp_path
