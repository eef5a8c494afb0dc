"""Application bundles (deployments/bundles.py): what is in one, that it is built once per content and
rebuilt when a source changes, and that a failed build leaves nothing behind. The roles that install
bundles on a real host are tested in the ``test_deploy_*_e2e`` files."""

from __future__ import annotations

import json
import tarfile

import pytest

from slm_project.deployments import bundles
from slm_project.deployments.bundles import BundleError, BundleSpec


@pytest.fixture
def repository(tmp_path, settings, monkeypatch):
    """A small repository with one bundle, ``demo``: a pure-Python wheel from the index and a package."""
    root = tmp_path / "repo"
    (root / "requirements").mkdir(parents=True)
    (root / "requirements" / "demo.txt").write_text("-r shared.txt\n")
    (root / "requirements" / "shared.txt").write_text("six==1.16.0\n")
    (root / "demo" / "__pycache__").mkdir(parents=True)
    (root / "demo" / "__init__.py").write_text("VERSION = 1\n")
    (root / "demo" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"stale")
    settings.BASE_DIR = root
    settings.DEPLOYMENTS_BUNDLE_DIR = str(tmp_path / "bundles")
    spec = BundleSpec(name="demo", requirements=("demo.txt", "shared.txt"), sources=("demo",))
    monkeypatch.setitem(bundles.BUNDLES, "demo", spec)
    return root


def test_a_bundle_holds_the_wheels_the_requirements_and_the_sources(repository):
    path = bundles.ensure("demo")
    assert path.name.startswith("demo-")
    assert path.name.endswith(f"-py{bundles.python_version()}.tar")
    with tarfile.open(path) as archive:
        names = set(archive.getnames())
        manifest = json.load(archive.extractfile("BUNDLE.json"))
    assert {"requirements/demo.txt", "requirements/shared.txt", "app/demo/__init__.py"} <= names
    assert not [name for name in names if "__pycache__" in name]
    assert manifest["requirements"] == "demo.txt"
    assert manifest["python"] == bundles.python_version()
    assert [wheel for wheel in manifest["wheels"] if wheel.startswith("six-1.16.0")]
    assert f"wheels/{manifest['wheels'][0]}" in names


def test_a_bundle_is_built_once_per_content_and_again_when_a_source_changes(repository, monkeypatch):
    first = bundles.ensure("demo")
    builds = []
    real_build = bundles._build
    monkeypatch.setattr(bundles, "_build", lambda *args: builds.append(args) or real_build(*args))
    assert bundles.ensure("demo") == first
    assert builds == []

    (repository / "demo" / "__init__.py").write_text("VERSION = 2\n")
    second = bundles.ensure("demo")
    assert second != first
    assert len(builds) == 1
    assert sorted(path.name for path in second.parent.glob("demo-*.tar")) == sorted([first.name, second.name])


def test_a_failed_build_says_why_and_leaves_nothing(repository):
    (repository / "requirements" / "shared.txt").write_text("autobot-no-such-package-anywhere==9.9\n")
    with pytest.raises(BundleError, match=r"building the wheels of demo\.txt failed"):
        bundles.ensure("demo")
    left = [path.name for path in bundles.bundle_dir().iterdir() if not path.name.startswith(".demo.lock")]
    assert left == []


def test_a_missing_source_or_an_unknown_bundle_is_refused(repository):
    with pytest.raises(BundleError, match="unknown bundle"):
        bundles.ensure("nothing")
    (repository / "requirements" / "shared.txt").unlink()
    with pytest.raises(BundleError, match=r"requirements/shared.txt does not exist"):
        bundles.ensure("demo")


def test_a_stop_from_keep_alive_ends_a_build(repository, monkeypatch):
    monkeypatch.setattr(bundles, "KEEP_ALIVE_SECONDS", 0.01)

    def stop():
        raise bundles.BuildStopped

    with pytest.raises(bundles.BuildStopped):
        bundles.ensure("demo", keep_alive=stop)
    assert [path for path in bundles.bundle_dir().glob("*.tar")] == []
