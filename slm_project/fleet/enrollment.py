"""Enrollment and connection tests: the SSH work on a node, run by Celery tasks (``fleet/tasks.py``).

Enrollment, in stages (each a function):
1. ``node_enroll_request`` (from the API/admin): checks the node may enroll and its host key is pinned
   or a fingerprint was supplied, seals an optional password in the vault, moves the node to
   ``enrolling`` and enqueues the task with the node id only.
2. ``enrollment_run`` (the task): pins a supplied fingerprint if the node presents it, connects with the
   pinned key only, authenticates with the SLM's own key (or once with the bootstrap password, then
   installs the SLM's key and verifies it works), gathers facts, and in one transaction stores the
   facts, issues the agent token and moves the node to ``online``. Any failure moves it to ``error``
   with the reason and leaves no facts or token behind. The bootstrap password is deleted either way.
3. In the same transaction, the run that makes the node ready is queued (``lifecycle``: enroll.yml
   deploys the baseline and the node agent with its token), so the node starts heartbeating on its own.

A changed host key is refused and recorded as a critical event on every connection.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction
from rest_framework.exceptions import APIException

from service_kit.errors import Conflict
from slm_project.fleet import lifecycle
from slm_project.fleet.choices import EventKind, NodeState, Severity, Trigger
from slm_project.fleet.models import Node, NodeEvent
from slm_project.fleet.runners import ssh
from slm_project.fleet.services import (
    node_agent_token_issue,
    node_event,
    node_host_key_capture,
    node_host_key_mismatch,
    node_host_key_pin_supplied,
)
from slm_project.fleet.states import node_transition
from slm_project.security.choices import CredentialKind
from slm_project.security.models import Credential
from slm_project.security.services import credential_delete, credential_reveal, credential_store

logger = logging.getLogger(__name__)

SLM_IDENTITY_NAME = "slm-ssh-identity"
ENROLL_ACTOR = "enrollment"

# Installs the SLM's public key ($1) for the login user, once. A fixed script: the key is an argument.
INSTALL_KEY_SCRIPT = (
    'umask 077; mkdir -p "$HOME/.ssh" && touch "$HOME/.ssh/authorized_keys" && '
    '{ grep -qxF "$1" "$HOME/.ssh/authorized_keys" || printf "%s\\n" "$1" >> "$HOME/.ssh/authorized_keys"; }'
)


class EnrollmentFailed(Exception):
    """Why enrollment stopped; the message is shown to operators as the node's state reason."""


# --------------------------------------------------------------------------------------------------
# The SLM's own SSH identity


@dataclass(frozen=True)
class SlmIdentity:
    credential: Credential
    public_key: str  # "ssh-ed25519 AAAA… autobot-slm"


@transaction.atomic
def slm_identity() -> SlmIdentity:
    """The SLM's SSH key pair (ed25519), made once; the private half lives only in the vault."""
    credential = (
        Credential.objects.select_for_update()
        .filter(name=SLM_IDENTITY_NAME, kind=CredentialKind.SSH_PRIVATE_KEY)
        .first()
    )
    if credential is None:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = (
            private.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        credential = credential_store(
            kind=CredentialKind.SSH_PRIVATE_KEY,
            name=SLM_IDENTITY_NAME,
            secret=pem,
            public_metadata={"public_key": f"{public} autobot-slm"},
        )
    return SlmIdentity(credential, credential.public_metadata["public_key"])


# --------------------------------------------------------------------------------------------------
# Requests (synchronous, from the API and the admin)


def enqueue(task_name: str, *args: str) -> None:
    """Send a task by name: services stay below the task modules (the layers contract) and the
    message carries ids only."""
    from slm_project import celery_app

    celery_app.send_task(task_name, args=args)


def node_enroll_request(
    *, node: Node, actor: str, password: str | None = None, host_key_fingerprint: str | None = None
) -> Node:
    if node.state not in (NodeState.PENDING, NodeState.ERROR):
        raise Conflict(f"{node.name} is {node.state}; only pending or failed nodes can be enrolled.")
    if not node.host_key and not host_key_fingerprint and not node.pending_host_key:
        raise Conflict(
            f"{node.name} has no pinned host key: test the connection to capture it, then accept it,"
            " or supply its fingerprint."
        )
    if not node.host_key and not host_key_fingerprint:
        raise Conflict(
            f"{node.name} presented host key {node.pending_host_key_fingerprint}: accept it (or supply"
            " the fingerprint) before enrolling."
        )
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        if password:
            _forget_bootstrap_credential(node)
            node.bootstrap_credential = credential_store(
                kind=CredentialKind.SSH_PASSWORD, name=f"bootstrap:{node.name}", secret=password
            )
        node.supplied_host_key_fingerprint = (host_key_fingerprint or "").strip()
        node.save(update_fields=["bootstrap_credential", "supplied_host_key_fingerprint", "updated_at"])
        node = node_transition(
            node=node,
            to_state=NodeState.ENROLLING,
            trigger=Trigger.OPERATOR,
            actor=actor,
            reason="enrollment requested",
        )
        node_event(node=node, kind=EventKind.ENROLLMENT_STARTED, message="Enrollment requested.", actor=actor)
        node_id = str(node.pk)
        transaction.on_commit(lambda: enqueue("fleet.enroll_node", node_id))
    return node


def node_connection_test_request(*, node: Node, actor: str) -> Node:
    if node.state == NodeState.DECOMMISSIONED:
        raise Conflict(f"{node.name} is decommissioned.")
    node_id = str(node.pk)
    transaction.on_commit(lambda: enqueue("fleet.test_node_connection", node_id, actor))
    return node


# --------------------------------------------------------------------------------------------------
# The work (Celery tasks call these with a node id)


def connection_test_run(*, node_id: str, actor: str) -> dict[str, object]:
    """Read the host key (capture it when none is pinned, flag it when it changed) and, with a pinned
    key, check that the SLM's identity can log in. Changes no state."""
    node = Node.objects.get(pk=node_id)
    result: dict[str, object] = {"reachable": False}
    try:
        presented = ssh.fetch_host_key(node.address, node.ssh_port)
    except ssh.SshUnreachable as exc:
        result["error"] = str(exc)
        _record_test(node, actor, result, Severity.WARNING)
        return result
    result |= {"reachable": True, "host_key_fingerprint": presented.fingerprint}
    if not node.host_key:
        node_host_key_capture(
            node=node,
            key_type=presented.key_type,
            key_base64=presented.base64,
            fingerprint=presented.fingerprint,
            actor=actor,
        )
        result["host_key"] = "captured, awaiting acceptance"
        _record_test(node, actor, result, Severity.INFO)
        return result
    try:
        identity = slm_identity()
        with _connect(node, private_key=credential_reveal(credential=identity.credential)) as session:
            result["login"] = session.run(["true"]).ok
    except EnrollmentFailed as exc:  # _connect has recorded a changed host key already
        result["error"] = str(exc)
    except ssh.SshError as exc:
        result["error"] = str(exc)
    _record_test(node, actor, result, Severity.INFO if "error" not in result else Severity.WARNING)
    return result


def _record_test(node: Node, actor: str, result: dict[str, object], severity: str) -> None:
    summary = "reachable" if result.get("reachable") else "unreachable"
    if "error" in result:
        summary += f": {result['error']}"
    node_event(
        node=node,
        kind=EventKind.CONNECTION_TESTED,
        message=f"Connection test: {summary}",
        actor=actor,
        severity=severity,
        data=result,
    )


def enrollment_run(*, node_id: str) -> Node:
    node = Node.objects.get(pk=node_id)
    if node.state != NodeState.ENROLLING:
        # A duplicate delivery, or the operator moved the node meanwhile: nothing to do.
        logger.info("enrollment of %s skipped: node is %s", node.name, node.state)
        return node
    try:
        _facts, token_node = _enroll(node)
    except EnrollmentFailed as exc:
        return _fail(node, str(exc))
    except Exception:
        logger.exception("enrollment of %s crashed", node.name)
        return _fail(node, "internal error during enrollment; see the SLM worker log")
    return token_node


def _enroll(node: Node) -> tuple[dict, Node]:
    _pin_supplied_fingerprint(node)
    node.refresh_from_db()
    identity = slm_identity()
    private_key = credential_reveal(credential=identity.credential)
    if node.bootstrap_credential is not None:
        password = credential_reveal(credential=node.bootstrap_credential).decode()
        with _connect(node, password=password) as session:
            installed = session.run(["sh", "-c", INSTALL_KEY_SCRIPT, "sh", identity.public_key])
            if not installed.ok:
                raise EnrollmentFailed(f"installing the SLM's key failed: {installed.stderr.strip()[:200]}")
        del password
    with _connect(node, private_key=private_key) as session:
        facts = gather_facts(session)
    with transaction.atomic():
        locked = Node.objects.select_for_update().get(pk=node.pk)
        if locked.state != NodeState.ENROLLING:
            raise EnrollmentFailed(f"the node moved to {locked.state} during enrollment")
        for field, value in facts.items():
            setattr(locked, field, value)
        locked.save(update_fields=[*facts, "updated_at"])
        token = node_agent_token_issue(node=locked, actor=ENROLL_ACTOR)
        _seal_agent_token(locked, token)
        _forget_bootstrap_credential(locked)
        locked = node_transition(
            node=locked,
            to_state=NodeState.ONLINE,
            trigger=Trigger.ENROLLMENT,
            actor=ENROLL_ACTOR,
            reason="enrolled",
        )
        enrolled = node_event(
            node=locked,
            kind=EventKind.ENROLLMENT_SUCCEEDED,
            message=f"Enrolled: {facts.get('os') or 'unknown OS'}, kernel {facts.get('kernel') or '?'}.",
            actor=ENROLL_ACTOR,
            data={"facts": facts},
        )
        _setup_start(locked, enrolled)
    return facts, locked


def _setup_start(node: Node, enrolled: NodeEvent) -> None:
    """Queue the run that makes the enrolled node ready (``lifecycle``: enroll.yml, the baseline and the
    node agent). The enrollment stands if it cannot be queued: the reason becomes an event that needs
    attention, and the operator deploys the ``slm-agent`` role once it is fixed."""
    playbooks = lifecycle.node_playbooks()
    if playbooks is None:
        return
    try:
        with transaction.atomic():
            deployment = playbooks.enrollment_succeeded(node=node, enrollment_event=enrolled)
    except (APIException, ValueError) as exc:
        detail = exc.detail if isinstance(exc, APIException) else str(exc)
        node_event(
            node=node,
            kind=EventKind.SETUP_FAILED,
            severity=Severity.WARNING,
            message=f"The node is enrolled but its agent could not be deployed: {detail}",
            actor=ENROLL_ACTOR,
            needs_attention=True,
        )
        return
    node_event(
        node=node,
        kind=EventKind.SETUP_STARTED,
        message=f"Making the node ready: run {deployment.pk} deploys the baseline and the node agent.",
        actor=ENROLL_ACTOR,
        data={"deployment": str(deployment.pk)},
    )


def _pin_supplied_fingerprint(node: Node) -> None:
    if node.host_key:
        return
    supplied = node.supplied_host_key_fingerprint
    if not supplied:
        raise EnrollmentFailed("no pinned host key and no fingerprint supplied")
    try:
        presented = ssh.fetch_host_key(node.address, node.ssh_port)
    except ssh.SshUnreachable as exc:
        raise EnrollmentFailed(str(exc)) from None
    if presented.fingerprint != supplied:
        node_host_key_mismatch(node=node, presented_fingerprint=presented.fingerprint, actor=ENROLL_ACTOR)
        raise EnrollmentFailed(
            f"the node presented host key {presented.fingerprint}, not the supplied {supplied}"
        )
    node_host_key_pin_supplied(
        node=node,
        key_type=presented.key_type,
        key_base64=presented.base64,
        fingerprint=presented.fingerprint,
        actor=ENROLL_ACTOR,
    )


_POOL = ssh.SshPool()


def _connect(node: Node, *, private_key: bytes | None = None, password: str | None = None):
    """A session to ``node`` with its pinned key; a changed key is recorded before the error rises."""
    target = ssh.SshTarget(
        address=node.address,
        port=node.ssh_port,
        user=node.ssh_user,
        host_key=ssh.HostKey(node.host_key_type, node.host_key, node.host_key_fingerprint),
        private_key=private_key,
        password=password,
    )
    return _recording_mismatch(node, target)


class _recording_mismatch:
    def __init__(self, node: Node, target: ssh.SshTarget) -> None:
        self.node, self.target = node, target
        self._context = None

    def __enter__(self) -> ssh.SshSession:
        # Password logins are one-off: never pooled.
        self._context = _POOL.session(self.target) if self.target.password is None else _single(self.target)
        try:
            return self._context.__enter__()
        except ssh.HostKeyMismatch as exc:
            node_host_key_mismatch(
                node=self.node, presented_fingerprint=exc.presented.fingerprint, actor=ENROLL_ACTOR
            )
            raise EnrollmentFailed(
                f"host key changed (pinned {exc.pinned.fingerprint}, presented {exc.presented.fingerprint});"
                " connection refused"
            ) from None
        except ssh.SshAuthenticationFailed as exc:
            raise EnrollmentFailed(f"authentication failed: {exc}") from None
        except ssh.SshUnreachable as exc:
            raise EnrollmentFailed(f"unreachable: {exc}") from None

    def __exit__(self, *exc_info):
        return self._context.__exit__(*exc_info)


class _single:
    def __init__(self, target: ssh.SshTarget) -> None:
        self.target = target
        self.session: ssh.SshSession | None = None

    def __enter__(self) -> ssh.SshSession:
        self.session = ssh.connect(self.target)
        return self.session

    def __exit__(self, *exc_info) -> None:
        if self.session is not None:
            self.session.close()


def gather_facts(session: ssh.SshSession) -> dict[str, object]:
    """OS, kernel, CPUs, memory and root disk size, from commands every Linux has."""
    facts: dict[str, object] = {}
    os_release = session.run(["cat", "/etc/os-release"])
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', os_release.stdout, re.MULTILINE)
    facts["os"] = (match.group(1) if match else "Linux")[:200]
    facts["kernel"] = session.run(["uname", "-r"]).stdout.strip()[:200]
    cpus = session.run(["nproc"]).stdout.strip()
    facts["cpus"] = int(cpus) if cpus.isdigit() else None
    meminfo = session.run(["cat", "/proc/meminfo"]).stdout
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    facts["memory_mb"] = int(match.group(1)) // 1024 if match else None
    df = session.run(["df", "-P", "-k", "/"]).stdout.splitlines()
    try:
        facts["disk_gb"] = round(int(df[1].split()[1]) / 1024 / 1024)
    except (IndexError, ValueError):
        facts["disk_gb"] = None
    return facts


def _seal_agent_token(node: Node, token: str) -> None:
    if node.agent_token_credential is not None:
        credential_delete(credential=node.agent_token_credential)
    node.agent_token_credential = credential_store(
        kind=CredentialKind.API_TOKEN, name=f"agent-token:{node.name}", secret=token
    )
    node.save(update_fields=["agent_token_credential", "updated_at"])


def _forget_bootstrap_credential(node: Node) -> None:
    if node.bootstrap_credential_id is not None:
        credential = node.bootstrap_credential
        node.bootstrap_credential = None
        node.save(update_fields=["bootstrap_credential", "updated_at"])
        credential_delete(credential=credential)


def _fail(node: Node, reason: str) -> Node:
    with transaction.atomic():
        locked = Node.objects.select_for_update().get(pk=node.pk)
        _forget_bootstrap_credential(locked)
        if locked.state == NodeState.ENROLLING:
            locked = node_transition(
                node=locked,
                to_state=NodeState.ERROR,
                trigger=Trigger.ENROLLMENT,
                actor=ENROLL_ACTOR,
                reason=reason,
            )
        node_event(
            node=locked,
            kind=EventKind.ENROLLMENT_FAILED,
            severity=Severity.CRITICAL,
            message=f"Enrollment failed: {reason}",
            actor=ENROLL_ACTOR,
            # The move to ``error`` already asks for attention; one item per failure is enough.
            needs_attention=locked.state != NodeState.ERROR,
        )
    return locked
