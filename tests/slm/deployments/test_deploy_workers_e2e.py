"""The embedding worker and the AI stack deployed end to end on the isolated test host
(tests/fixtures/isolated_host.py): the real ``npu_worker`` and ``ai_stack`` roles through the Celery task
by a real worker, their bundles built here and installed there without a package index, then the running
services called over HTTP from this machine at the node's address: the embeddings match
sentence-transformers' own numbers, the vector store finds the nearest text, the speech is a real WAV."""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from celery.contrib.testing.worker import start_worker

from slm_project import celery_app
from slm_project.deployments import services
from slm_project.deployments.choices import FINISHED, RunStatus
from slm_project.deployments.models import DeploymentEvent, DeploymentRun
from slm_project.fleet import enrollment
from slm_project.fleet import services as fleet_services
from slm_project.fleet.choices import NodeRoleStatus, NodeState, RoleName
from slm_project.fleet.models import Node, NodeRole
from tests.slm.fleet.factories import make_node
from tests.workers.ai_stack.wav import wav_samples
from tests.workers.npu_worker import reference

pytestmark = pytest.mark.django_db(transaction=True)

ROLES = [RoleName.NPU_WORKER.value, RoleName.AI_STACK.value]
# Operator-settable variables (the registry's allowlist), to see them arrive in the services' configs.
# The voices as the deployment wizard's text field gives them: one comma-separated string.
EXTRA_VARS = {
    "npu_worker_max_batch": 16,
    "ai_stack_tts_voices": "en-gb, en-us,de",
    "ai_stack_tts_default_voice": "en-gb",
}
SERVICES = ("autobot-npu-worker", "autobot-ai-stack")
# The first run may build both bundles (pip wheel; the model wheel alone is 80 MB), copies them to the
# host and installs them into a virtualenv each.
RUN_WAIT_SECONDS = 900


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    enrollment._POOL.close_all()


@pytest.fixture
def work_dir(settings):
    """A short private work dir for the runs (SSH control socket paths must stay under 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="abw-"))
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
    """The isolated host, enrolled the way an operator does it (test_deploy_e2e.py does the same)."""
    isolated_host.authorize(enrollment.slm_identity().public_key)
    node = make_node(address=isolated_host.address, ssh_port=isolated_host.port, ssh_user=isolated_host.user)
    enrollment.connection_test_run(node_id=str(node.pk), actor="user:ops")
    node.refresh_from_db()
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


def deploy(node: Node) -> DeploymentRun:
    deployment = services.deployment_create(
        node_ids=[node.pk], roles=ROLES, requested_by="user:ops", extra_vars=EXTRA_VARS
    )
    run = deployment.runs.get()
    deadline = time.monotonic() + RUN_WAIT_SECONDS
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in FINISHED:
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run.pk} still {run.status} after {RUN_WAIT_SECONDS} s")


def failures(run: DeploymentRun) -> str:
    """The run's reason and what its failed tasks said (the assertion message of a failed run)."""
    failed = DeploymentEvent.objects.filter(run=run, failed=True).order_by("counter")
    return "\n".join([run.status_reason, *(f"{event.task}: {event.stdout[-3000:]}" for event in failed)])


def assert_events_complete(run: DeploymentRun) -> list[DeploymentEvent]:
    events = list(DeploymentEvent.objects.filter(run=run).order_by("counter"))
    assert run.events_emitted > 10
    assert run.events_stored == run.events_emitted == len(events)
    assert [event.counter for event in events] == list(range(1, len(events) + 1))
    assert events[0].event == "playbook_on_start"
    assert events[-1].event == "playbook_on_stats"
    return events


def request(method: str, url: str, body: object = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one HTTP request; an error status is an answer, not an exception."""
    data = None if body is None else json.dumps(body).encode()
    call = urllib.request.Request(  # noqa: S310 - http to the test host
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(call, timeout=60) as answer:  # noqa: S310 - http to the test host
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


def post_json(url: str, body: object) -> dict:
    status, content_type, data = request("POST", url, body)
    assert status == 200, data[:500]
    assert content_type == "application/json"
    return json.loads(data)


def test_the_workers_are_deployed_for_real_and_a_rerun_changes_nothing(isolated_host, node, work_dir):
    started = time.monotonic()
    run = deploy(node)
    first_seconds = time.monotonic() - started
    assert run.status == RunStatus.SUCCEEDED, failures(run)
    stats = run.host_stats[node.name]
    assert stats["changed"] > 0
    assert stats["failed"] == stats["unreachable"] == 0
    events = assert_events_complete(run)
    ok_tasks = {event.task for event in events if event.event == "runner_on_ok"}
    assert {
        "Health check - the worker answers /health with its model loaded",
        "Health check - the worker embeds a sentence",
        "Health check - the service answers /health (vector store and espeak-ng ready)",
        "Health check - speech synthesis returns a WAV",
    } <= ok_tasks, ok_tasks
    for role in ROLES:
        assert NodeRole.objects.get(node=node, role__name=role).status == NodeRoleStatus.ACTIVE
    assert list(work_dir.iterdir()) == [], sorted(str(p) for p in work_dir.rglob("*"))

    npu = f"http://{isolated_host.address}:8081"
    ai_stack = f"http://{isolated_host.address}:8080"

    # The embedding worker, from this machine: sentence-transformers' numbers, the operator's batch limit.
    status, _, data = request("GET", f"{npu}/health")
    assert status == 200
    assert json.loads(data) == {
        "status": "ok",
        "model": "all-MiniLM-L6-v2",
        "dimensions": reference.DIMENSIONS,
        "max_tokens": 256,
        "max_batch": 16,
    }
    embedded = post_json(f"{npu}/v1/embeddings", {"input": list(reference.TEXTS)})
    vectors = np.array([item["embedding"] for item in embedded["data"]])
    for vector, expected in zip(vectors, reference.FIRST_DIMS, strict=True):
        np.testing.assert_allclose(vector[:8], expected, atol=reference.TOLERANCE, rtol=0)
    assert vectors[0] @ vectors[1] == pytest.approx(reference.COSINE_FOXES, abs=reference.TOLERANCE)
    status, _, data = request("POST", f"{npu}/v1/embeddings", {"input": ["x"] * 17})
    assert (status, json.loads(data)["code"]) == (413, "batch_too_large")
    latencies = []
    for _ in range(10):
        began = time.perf_counter()
        post_json(f"{npu}/v1/embeddings", {"input": reference.TEXTS[1]})
        latencies.append((time.perf_counter() - began) * 1000)

    # The AI stack's vector store, fed with the worker's embeddings: a paraphrase finds its sentence.
    ids = ["fox", "fox-paraphrase", "revenue", "deployment"]
    upserted = post_json_put(f"{ai_stack}/v1/collections/e2e/points", ids, vectors)
    assert upserted == {"collection": "e2e", "upserted": 4, "count": 4}
    question = post_json(
        f"{npu}/v1/embeddings", {"input": "How did the company's sales develop this quarter?"}
    )
    found = post_json(
        f"{ai_stack}/v1/collections/e2e/query", {"vector": question["data"][0]["embedding"], "top_k": 2}
    )
    assert found["results"][0]["id"] == "revenue", found
    assert found["results"][0]["metadata"] == {"text": reference.TEXTS[2]}
    assert found["results"][0]["score"] > found["results"][1]["score"]
    status, _, data = request("POST", f"{ai_stack}/v1/collections/e2e/query", {"vector": [1.0, 0.0]})
    assert (status, json.loads(data)["code"]) == (400, "dimension_mismatch")

    # Speech: a WAV with real samples, in the operator's default voice.
    status, content_type, wav = request("POST", f"{ai_stack}/v1/tts", {"text": "Deployment finished."})
    assert (status, content_type) == (200, "audio/wav")
    rate, samples = wav_samples(wav)
    assert len(samples) / rate > 0.5
    assert np.abs(samples.astype(np.int32)).max() > 1000
    status, _, data = request("POST", f"{ai_stack}/v1/tts", {"text": "hi", "voice": "fr-fr"})  # not allowed
    assert (status, json.loads(data)["code"]) == (400, "bad_request")

    # Inside the host: each service runs as its own user, its config is not world-readable, the store is
    # in its data directory, and the operator's variables are in the configs.
    # (The host is shared by the session: other workers deployed by other tests may run beside these.)
    users: dict[str, set[str]] = {}
    for line in isolated_host.run(["ps", "-e", "-ww", "-o", "pid=,user:32=,args="]).stdout.splitlines():
        for module in ("workers.npu_worker", "workers.ai_stack"):
            if f"-m {module}" in line:
                users.setdefault(module, set()).add(line.split()[1])
    assert users == {
        "workers.npu_worker": {"autobot-npu-worker"},
        "workers.ai_stack": {"autobot-ai-stack"},
    }, users
    modes = isolated_host.run(
        ["stat", "-c", "%a %G", "/etc/autobot/npu-worker.json", "/etc/autobot/ai-stack.json"]
    ).stdout.split("\n")
    assert modes[:2] == ["640 autobot-npu-worker", "640 autobot-ai-stack"]
    ai_config = json.loads(isolated_host.run(["cat", "/etc/autobot/ai-stack.json"]).stdout)
    assert (ai_config["tts_voices"], ai_config["tts_default_voice"]) == (["en-gb", "en-us", "de"], "en-gb")
    assert (
        isolated_host.run(["test", "-s", "/var/lib/autobot/ai-stack/vectors.sqlite3"], check=False).returncode
        == 0
    )
    pids = {name: isolated_host.run(["cat", f"/run/{name}.pid"]).stdout.strip() for name in SERVICES}

    started = time.monotonic()
    rerun = deploy(node)
    rerun_seconds = time.monotonic() - started
    assert rerun.status == RunStatus.SUCCEEDED, failures(rerun)
    assert rerun.host_stats[node.name]["changed"] == 0, [
        event.task for event in DeploymentEvent.objects.filter(run=rerun, changed=True)
    ]
    assert_events_complete(rerun)
    # Nothing changed, so nothing restarted, and the stored vectors are still there.
    assert {name: isolated_host.run(["cat", f"/run/{name}.pid"]).stdout.strip() for name in SERVICES} == pids
    status, _, data = request("GET", f"{ai_stack}/v1/collections/e2e")
    assert (status, json.loads(data)["count"]) == (200, 4)
    print(  # noqa: T201 - the figures of the run
        f"\nfirst deploy {first_seconds:.1f} s, re-run {rerun_seconds:.1f} s; embedding of one sentence over "
        f"HTTP: median {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms"
    )


def post_json_put(url: str, ids: list[str], vectors: np.ndarray) -> dict:
    metadata = [{"text": text} for text in reference.TEXTS]
    status, _, data = request("PUT", url, {"ids": ids, "vectors": vectors.tolist(), "metadata": metadata})
    assert status == 200, data[:500]
    return json.loads(data)
