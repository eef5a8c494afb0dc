"""Application bundles: what a role that runs Python code copies to its nodes.

A node may have no route to a package index (an air-gapped site, the isolated test host), so a role never
runs ``pip install`` against one. The SLM builds a *bundle* instead: one tar file holding every wheel the
application needs (``pip wheel`` here, where the index and pip's cache are), its requirement files and its
source. The role's ``common/tasks/python_bundle.yml`` copies the file, unpacks it into a release directory
named by its hash, makes a virtualenv with the node's own ``python3`` and installs from the wheels only
(``--no-index``), then points ``/opt/autobot/<name>/current`` at it.

A bundle's name carries a hash of everything in it (the spec, the SLM's Python version, the requirement
files and every source file), so a changed source is a new file and a new release, and an unchanged one is
built once and reused by every run. Wheels are built for this interpreter: nodes need the same Python
minor version (Debian 12's 3.11 for both); the role checks it and fails with both versions named.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings

# How often a build calls its ``keep_alive`` (an executor renews its lease and reads cancel requests).
KEEP_ALIVE_SECONDS = 5.0
BUILD_TIMEOUT_SECONDS = 30 * 60
SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class BundleSpec:
    """``requirements``: files of ``requirements/`` (``-r`` includes must be listed too: they are copied
    as they are); ``sources``: repository paths shipped under ``app/``; ``no_deps_requirements``: files
    of ``requirements/`` whose distributions are built (and installed by the role) without their
    dependencies: data packages such as a model's weights that declare a stack the service does not use."""

    name: str
    requirements: tuple[str, ...]
    sources: tuple[str, ...] = ()
    no_deps_requirements: tuple[str, ...] = ()


BUNDLES: dict[str, BundleSpec] = {
    spec.name: spec
    for spec in (
        BundleSpec(
            name="npu_worker",
            requirements=("npu_worker.txt",),
            no_deps_requirements=("npu_worker_model.txt",),
            sources=("workers/__init__.py", "workers/jsonapi.py", "workers/npu_worker"),
        ),
        BundleSpec(
            name="ai_stack",
            requirements=("ai_stack.txt",),
            sources=("workers/__init__.py", "workers/jsonapi.py", "workers/ai_stack"),
        ),
        BundleSpec(
            name="backend",
            requirements=("business.txt", "base.txt"),
            sources=("business_project", "shared_contracts", "service_kit", "manage_business.py"),
        ),
        BundleSpec(name="llm", requirements=("llm.txt",)),
        BundleSpec(
            name="browser_worker",
            requirements=("browser_worker.txt",),
            sources=("workers/__init__.py", "workers/browser_worker"),
        ),
    )
}


class BundleError(Exception):
    """A bundle could not be built; the message says why (shown to operators as the run's reason)."""


class BuildStopped(Exception):
    """``keep_alive`` asked the build to stop (the run was canceled or lost its lease)."""


def repository_dir() -> Path:
    return Path(settings.BASE_DIR)


def bundle_dir() -> Path:
    return Path(settings.DEPLOYMENTS_BUNDLE_DIR)


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for child in sorted(path.rglob("*")):
        skipped = SKIPPED_PARTS & set(child.parts) or child.suffix in SKIPPED_SUFFIXES
        if child.is_file() and not skipped:
            yield child


def content_hash(spec: BundleSpec) -> str:
    """A hash of everything that goes into the bundle (first 16 hex digits)."""
    root = repository_dir()
    digest = hashlib.sha256(json.dumps([asdict(spec), python_version()]).encode())
    paths = [root / "requirements" / name for name in (*spec.requirements, *spec.no_deps_requirements)]
    for source in spec.sources:
        paths.extend(_files(root / source))
    for path in paths:
        if not path.is_file():
            raise BundleError(f"bundle {spec.name}: {path.relative_to(root)} does not exist")
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def bundle_file(name: str) -> Path:
    """Where the bundle ``name`` of the current sources is (or will be) kept."""
    spec = BUNDLES[name]
    return bundle_dir() / f"{spec.name}-{content_hash(spec)}-py{python_version()}.tar"


def ensure(name: str, *, keep_alive: Callable[[], None] | None = None) -> Path:
    """The bundle ``name`` for the current sources, built first if it is not there yet (one builder at a
    time per bundle; a second waits and then finds it). ``keep_alive`` is called every few seconds while
    a build runs; raising ``BuildStopped`` from it stops the build."""
    if name not in BUNDLES:
        raise BundleError(f"unknown bundle {name!r}")
    target = bundle_file(name)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{name}.lock", keep_alive):
        if not target.is_file():
            _build(BUNDLES[name], target, keep_alive)
    return target


@contextlib.contextmanager
def _locked(path: Path, keep_alive: Callable[[], None] | None) -> Iterator[None]:
    with path.open("w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if keep_alive is not None:
                    keep_alive()
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(spec: BundleSpec, target: Path, keep_alive: Callable[[], None] | None) -> None:
    root = repository_dir()
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        requirements = staging / "requirements"
        requirements.mkdir()
        for name in (*spec.requirements, *spec.no_deps_requirements):
            shutil.copy2(root / "requirements" / name, requirements / name)
        wheels = staging / "wheels"
        _pip_wheel(requirements / spec.requirements[0], wheels, keep_alive)
        for name in spec.no_deps_requirements:
            _pip_wheel(requirements / name, wheels, keep_alive, no_deps=True)
        for source in spec.sources:
            for path in _files(root / source):
                destination = staging / "app" / path.relative_to(root)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)
        manifest = {
            "name": spec.name,
            "hash": target.stem.split("-")[-2],
            "python": python_version(),
            "requirements": spec.requirements[0],
            "no_deps_requirements": list(spec.no_deps_requirements),
            "wheels": sorted(path.name for path in wheels.iterdir()),
        }
        (staging / "BUNDLE.json").write_text(json.dumps(manifest, indent=2) + "\n")
        partial = staging.with_suffix(".tar")
        with tarfile.open(partial, "w") as archive:
            for path in sorted(staging.iterdir()):
                archive.add(path, arcname=path.name)
        os.replace(partial, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            staging.with_suffix(".tar").unlink()


def _pip_wheel(
    requirements: Path, wheels: Path, keep_alive: Callable[[], None] | None, *, no_deps: bool = False
) -> None:
    """``pip wheel`` of the requirements and all they need (only them with ``no_deps``) into ``wheels``
    (pip's cache makes a rebuild cheap). Its output goes to a file, read back only when it fails."""
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels)]
    if no_deps:
        command.append("--no-deps")
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(  # noqa: S603 - a fixed argument list
            [*command, "-r", str(requirements)],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=requirements.parent,
        )
        deadline = time.monotonic() + BUILD_TIMEOUT_SECONDS
        try:
            while True:
                try:
                    process.wait(timeout=KEEP_ALIVE_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        raise BundleError(f"pip wheel took longer than {BUILD_TIMEOUT_SECONDS} s") from None
                    if keep_alive is not None:
                        keep_alive()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        if process.returncode != 0:
            output.seek(0)
            tail = output.read().decode(errors="replace")[-1500:]
            raise BundleError(f"building the wheels of {requirements.name} failed: {tail}")
