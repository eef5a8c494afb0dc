"""The ``llm`` (llama_cpp engine) and ``browser_worker`` roles deployed for real onto the isolated test host
(tests/fixtures/isolated_host.py) through the Celery task, then used from this machine: a streamed chat
completion from the LLM server, pages read by the browser worker inside the host, a host outside its
allowlist refused; a re-run changes nothing.

The ``ollama`` engine cannot be deployed here (no route to ollama.com or GitHub's release files, and
Ollama is on no package index this machine reaches): only the guard in front of its download is run."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import requests
from celery.contrib.testing.worker import start_worker

from slm_project import celery_app
from slm_project.deployments import services
from slm_project.deployments.choices import FINISHED, RunStatus
from slm_project.deployments.models import DeploymentEvent, DeploymentRun
from slm_project.fleet import enrollment
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import NodeRoleStatus, NodeState
from slm_project.fleet.models import Node, NodeRole
from tests.slm.fleet.factories import make_node

pytestmark = pytest.mark.django_db(transaction=True)

# The first run copies the bundles (the llm one holds the 250 MB model) and installs them offline.
RUN_WAIT_SECONDS = 600
PAGE_PORT = 8090
PAGE_TITLE = "Inside page"
PAGE_TEXT = "Served from inside the isolated host."


# --------------------------------------------------------------------------------------------------
# Fixtures (as tests/slm/deployments/test_deploy_e2e.py)


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    enrollment._POOL.close_all()


@pytest.fixture
def work_dir(settings):
    """A short private work dir for the runs (SSH control socket paths must stay under 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="abd-"))
    settings.DEPLOYMENTS_WORK_DIR = str(directory)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def worker():
    with start_worker(
        celery_app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=30,
        queues=["default", "deployments"],
    ) as running:
        yield running


@pytest.fixture
def node(isolated_host, worker) -> Node:
    """The isolated host, enrolled the way an operator does it: capture and accept its key, then the
    enrollment task (through the worker) logs in with the SLM's own key."""
    isolated_host.authorize(enrollment.slm_identity().public_key)
    node = make_node(address=isolated_host.address, ssh_port=isolated_host.port, ssh_user=isolated_host.user)
    enrollment.connection_test_run(node_id=str(node.pk), actor="user:ops")
    node.refresh_from_db()
    assert node.pending_host_key_fingerprint == isolated_host.host_key_fingerprint
    node = fleet_services.node_host_key_accept(
        node=node, fingerprint=node.pending_host_key_fingerprint, actor="user:ops"
    )
    node = enrollment.node_enroll_request(node=node, actor="user:ops")
    deadline = time.monotonic() + 60
    while node.state == NodeState.ENROLLING and time.monotonic() < deadline:
        time.sleep(0.2)
        node.refresh_from_db()
    assert node.state == NodeState.ONLINE, node.state_reason
    return node


@pytest.fixture
def page_inside(isolated_host) -> str:
    """A page served inside the host, on every address of it (so that a refused request would have found
    it on the loopback too). The server ends with the host."""
    site = "/srv/autobot-test-site"
    html = f"<!doctype html><title>{PAGE_TITLE}</title><h1>Hello</h1><p>{PAGE_TEXT}</p>"
    isolated_host.run(["sh", "-c", 'mkdir -p "$1" && cat > "$1/index.html"', "sh", site], input=html)
    isolated_host.run(
        [
            "sh",
            "-c",
            f"setsid python3 -m http.server {PAGE_PORT} --bind 0.0.0.0 --directory {site} "
            "</dev/null >/dev/null 2>&1 &",
        ]
    )
    url = f"http://{isolated_host.address}:{PAGE_PORT}/"
    deadline = time.monotonic() + 10
    while True:
        try:
            requests.get(url, timeout=1).raise_for_status()
            return url
        except requests.RequestException:
            assert time.monotonic() < deadline, "the page server inside the host did not start"
            time.sleep(0.1)


def wait_for_end(run: DeploymentRun) -> DeploymentRun:
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in FINISHED:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run.pk} still {run.status} after {RUN_WAIT_SECONDS} s")


def deploy(node: Node, **values) -> DeploymentRun:
    deployment = services.deployment_create(node_ids=[node.pk], requested_by="user:ops", **values)
    return wait_for_end(deployment.runs.get())


def assert_events_complete(run: DeploymentRun) -> list[DeploymentEvent]:
    events = list(DeploymentEvent.objects.filter(run=run).order_by("counter"))
    assert run.events_emitted > 10
    assert run.events_stored == run.events_emitted == len(events)
    assert [event.counter for event in events] == list(range(1, len(events) + 1))
    assert events[0].event == "playbook_on_start"
    assert events[-1].event == "playbook_on_stats"
    return events


def failed_tasks(run: DeploymentRun) -> list[tuple[str, str]]:
    return [
        (event.task, str(event.result.get("msg", ""))[:500])
        for event in DeploymentEvent.objects.filter(run=run, failed=True)
    ]


def stream_chat(base_url: str, prompt: str) -> tuple[list[str], bool]:
    """The content pieces of a streamed chat completion, and whether the stream ended with [DONE]."""
    pieces: list[str] = []
    done = False
    with requests.post(
        f"{base_url}/v1/chat/completions",
        json={
            "model": "gemma-3-270m",
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "max_tokens": 24,
        },
        stream=True,
        timeout=120,
    ) as response:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                break
            delta = json.loads(data)["choices"][0]["delta"]
            if delta.get("content"):
                pieces.append(delta["content"])
    return pieces, done


# --------------------------------------------------------------------------------------------------
# Tests


def test_llm_and_browser_worker_are_deployed_for_real_and_a_rerun_changes_nothing(
    isolated_host, node, work_dir, page_inside
):
    address = isolated_host.address
    extra_vars = {"llm_engine": "llama_cpp", "browser_worker_allowed_hosts": address}
    started = time.monotonic()
    run = deploy(node, roles=["llm", "browser-worker"], extra_vars=extra_vars)
    first_seconds = time.monotonic() - started
    assert run.status == RunStatus.SUCCEEDED, (run.status_reason, failed_tasks(run))
    stats = run.host_stats[node.name]
    assert stats["changed"] > 0
    assert stats["failed"] == stats["unreachable"] == 0
    events = assert_events_complete(run)
    tasks = {event.task for event in events if event.event == "runner_on_ok"}
    assert "Health check - the models endpoint answers and lists the model" in tasks
    assert "Health check - the worker answers and its browser is connected" in tasks
    assert "Health check - a host outside the allowlist is refused" in tasks
    for role in ("llm", "browser-worker"):
        assert NodeRole.objects.get(node=node, role__name=role).status == NodeRoleStatus.ACTIVE

    # Both services run as their own users, from their bundles' releases.
    owners = isolated_host.run(["ps", "-e", "-ww", "-o", "user:24=,args="]).stdout.splitlines()
    assert any(line.split()[0] == "ollama" and "-m llama_cpp.server" in line for line in owners), owners
    assert any(
        line.split()[0] == "autobot-browser" and "-m workers.browser_worker" in line for line in owners
    ), owners
    assert any(line.split()[0] == "autobot-browser" and "chromium" in line for line in owners), owners

    # The LLM server streams a chat completion to this machine and lists its model.
    llm_url = f"http://{address}:11434"
    models = requests.get(f"{llm_url}/v1/models", timeout=10).json()
    assert [model["id"] for model in models["data"]] == ["gemma-3-270m"]
    pieces, done = stream_chat(llm_url, "Write one sentence about foxes.")
    assert done
    assert len(pieces) >= 2, pieces
    assert "".join(pieces).strip()

    # The browser worker reads the page served inside the host and refuses any other host.
    worker_url = f"http://{address}:3000"
    health = requests.get(f"{worker_url}/health", timeout=30).json()
    assert health["browser"]["connected"] is True
    answer = requests.post(f"{worker_url}/v1/text", json={"url": page_inside}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["status"], body["title"], body["final_url"]) == (200, PAGE_TITLE, page_inside)
    assert PAGE_TEXT in body["text"]
    shot = requests.post(f"{worker_url}/v1/screenshot", json={"url": page_inside}, timeout=60)
    assert (shot.status_code, shot.headers["content-type"]) == (200, "image/png")
    assert shot.content.startswith(b"\x89PNG")
    # The same server on the host's loopback, under another name, and a host on the internet.
    for refused in (
        f"http://127.0.0.1:{PAGE_PORT}/",
        f"http://localhost:{PAGE_PORT}/",
        "https://example.com/",
    ):
        answer = requests.post(f"{worker_url}/v1/navigate", json={"url": refused}, timeout=30)
        assert (answer.status_code, answer.json()["code"]) == (403, "host_not_allowed"), refused
    answer = requests.post(f"{worker_url}/v1/navigate", json={"url": "file:///etc/shadow"}, timeout=30)
    assert (answer.status_code, answer.json()["code"]) == (400, "bad_request")

    # The run's files are gone from this machine.
    assert list(work_dir.iterdir()) == [], sorted(str(p) for p in work_dir.rglob("*"))

    started = time.monotonic()
    rerun = deploy(node, roles=["llm", "browser-worker"], extra_vars=extra_vars)
    rerun_seconds = time.monotonic() - started
    assert rerun.status == RunStatus.SUCCEEDED, (rerun.status_reason, failed_tasks(rerun))
    assert rerun.host_stats[node.name]["changed"] == 0, [
        event.task for event in DeploymentEvent.objects.filter(run=rerun, changed=True)
    ]
    assert_events_complete(rerun)
    print(f"\nfirst deploy {first_seconds:.1f} s, re-run {rerun_seconds:.1f} s")  # noqa: T201 - timing


def test_the_ollama_engine_copies_no_archive_whose_checksum_differs(isolated_host, node, work_dir, tmp_path):
    """``llm_ollama_archive_path`` names a file on the SLM's machine: it reaches the node only when its
    sha256 is the one given, so the variable cannot carry any other file of this machine to a node."""
    archive = tmp_path / "ollama-linux-amd64.tgz"
    archive.write_bytes(b"not the archive the operator vouched for")
    vouched = hashlib.sha256(b"the real release archive").hexdigest()
    run = deploy(
        node,
        roles=["llm"],
        extra_vars={
            "llm_engine": "ollama",
            "llm_ollama_archive_path": str(archive),
            "llm_ollama_archive_checksum": f"sha256:{vouched}",
        },
    )
    assert run.status == RunStatus.FAILED
    failed = failed_tasks(run)
    checked = "The archive on the SLM's machine has the given checksum (ollama)"
    assert [task for task, _ in failed] == [checked]
    assert f"its sha256 is not {vouched}" in failed[0][1]
    assert isolated_host.run(["sh", "-c", "ls /opt/ollama/archives | wc -l"]).stdout.strip() == "0"
    assert_events_complete(run)

    # Without a checksum nothing is fetched at all.
    run = deploy(
        node,
        roles=["llm"],
        extra_vars={"llm_engine": "ollama", "llm_ollama_archive_url": "https://example.com/ollama.tgz"},
    )
    assert run.status == RunStatus.FAILED
    assert [task for task, _ in failed_tasks(run)] == ["The archive and its checksum were given (ollama)"]
