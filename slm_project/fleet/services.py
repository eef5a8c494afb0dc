"""Writes of the fleet: nodes, roles, agent tokens, heartbeats and the operator actions on nodes.

SSH work (testing a connection, enrolling) runs in Celery tasks (``fleet/tasks.py``) that call
``fleet/enrollment.py``; the functions here only record intent and results.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, connections, models, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import ValidationError

from service_kit.errors import Conflict
from slm_project.access.tokens import token_hash, token_new
from slm_project.fleet import lifecycle
from slm_project.fleet.choices import EventKind, NodeRoleStatus, NodeState, ServiceState, Severity, Trigger
from slm_project.fleet.constants import AGENT_TOKEN_PREFIX
from slm_project.fleet.models import Node, NodeEvent, NodeRole, Role, Service
from slm_project.fleet.registry import ROLES
from slm_project.fleet.states import TransitionNotAllowed, can_transition, node_transition
from slm_project.security.services import credential_delete

_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
)


# --------------------------------------------------------------------------------------------------
# Role registry


@transaction.atomic
def role_registry_sync() -> None:
    """Make the ``Role`` table equal to ``fleet.registry.ROLES`` (run after every migrate)."""
    rows = {}
    for definition in ROLES.values():
        role, _ = Role.objects.update_or_create(
            name=definition.name,
            defaults={
                "description": definition.description,
                "services": list(definition.services),
                "ports": list(definition.ports),
                "health_probe": definition.health_probe,
                "playbook": definition.playbook,
            },
        )
        rows[definition.name] = role
    for definition in ROLES.values():
        rows[definition.name].depends_on.set([rows[name] for name in definition.depends_on])


# --------------------------------------------------------------------------------------------------
# Nodes


def validate_address(address: str) -> str:
    address = address.strip()
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        pass
    if _DNS_NAME.match(address) and not address.replace(".", "").isdigit():
        return address.lower()
    raise ValidationError({"address": ["Enter an IP address or a DNS name."]})


def node_event(
    *,
    node: Node,
    kind: str,
    message: str,
    actor: str,
    severity: str = Severity.INFO,
    data: dict[str, Any] | None = None,
    needs_attention: bool = False,
) -> NodeEvent:
    return NodeEvent.objects.create(
        node=node,
        kind=kind,
        severity=severity,
        message=message[:1000],
        data=data or {},
        actor=actor,
        needs_attention=needs_attention,
    )


@transaction.atomic
def node_create(
    *,
    name: str,
    address: str,
    ssh_port: int = 22,
    ssh_user: str = "autobot",
    labels: dict[str, str] | None = None,
    roles: list[str] | None = None,
    actor: str,
) -> Node:
    """Register a node in ``pending``. Duplicate names are a 409, bad values a 400; nothing is written
    unless everything is valid."""
    node = Node(
        name=name,
        address=validate_address(address),
        ssh_port=ssh_port,
        ssh_user=ssh_user,
        labels=labels or {},
    )
    _full_clean(node)
    try:
        with transaction.atomic():
            node.save()
    except IntegrityError:
        raise Conflict(f"A node named {name!r} exists already.") from None
    node_roles_set(node=node, roles=roles or [])
    node_event(node=node, kind=EventKind.CREATED, message=f"Registered {name} at {node.address}", actor=actor)
    return node


def _full_clean(node: Node) -> None:
    from django.core.exceptions import ValidationError as DjangoValidationError

    try:
        node.full_clean(exclude=["bootstrap_credential", "agent_token_credential"], validate_unique=False)
    except DjangoValidationError as exc:
        raise ValidationError(exc.message_dict) from None


@transaction.atomic
def node_update(*, node: Node, actor: str, **changes: Any) -> Node:
    """Change a node's connection settings or labels. Connection settings are frozen once the host key
    is pinned (a new address means a new machine: decommission and register it again)."""
    connection_fields = {"address", "ssh_port", "ssh_user"}
    if node.state == NodeState.DECOMMISSIONED:
        raise Conflict(f"{node.name} is decommissioned.")
    if connection_fields & changes.keys() and node.host_key:
        changed = {f for f in connection_fields & changes.keys() if changes[f] != getattr(node, f)}
        if changed:
            raise Conflict(
                f"{node.name} has a pinned host key; its {', '.join(sorted(changed))} cannot change."
            )
    if "address" in changes:
        changes["address"] = validate_address(changes["address"])
    roles = changes.pop("roles", None)
    for field, value in changes.items():
        setattr(node, field, value)
    _full_clean(node)
    node.save()
    if roles is not None:
        node_roles_set(node=node, roles=roles)
    return node


def node_roles_set(*, node: Node, roles: list[str]) -> None:
    unknown = sorted(set(roles) - ROLES.keys())
    if unknown:
        raise ValidationError({"roles": [f"Unknown roles: {', '.join(unknown)}."]})
    wanted = {role.name: role for role in Role.objects.filter(name__in=roles)}
    if len(wanted) != len(set(roles)):
        role_registry_sync()
        wanted = {role.name: role for role in Role.objects.filter(name__in=roles)}
    NodeRole.objects.filter(node=node).exclude(role__name__in=wanted).delete()
    for role in wanted.values():
        NodeRole.objects.get_or_create(node=node, role=role)


def node_drain(*, node: Node, actor: str, reason: str = "") -> Node:
    return node_transition(
        node=node, to_state=NodeState.DRAINING, trigger=Trigger.OPERATOR, actor=actor, reason=reason
    )


def node_enter_maintenance(*, node: Node, actor: str, reason: str = "") -> Node:
    return node_transition(
        node=node, to_state=NodeState.MAINTENANCE, trigger=Trigger.OPERATOR, actor=actor, reason=reason
    )


def node_resume(*, node: Node, actor: str, reason: str = "") -> Node:
    """Bring a drained, maintained or failed node back: through ``recovering`` to ``online``."""
    if node.state == NodeState.DRAINING:
        node = node_enter_maintenance(node=node, actor=actor, reason=reason or "resumed from draining")
    node = node_transition(
        node=node, to_state=NodeState.RECOVERING, trigger=Trigger.OPERATOR, actor=actor, reason=reason
    )
    return node_transition(
        node=node, to_state=NodeState.ONLINE, trigger=Trigger.OPERATOR, actor=actor, reason=reason
    )


def node_is_enrolled(node: Node) -> bool:
    """Whether an enrollment reached the machine (its host key is pinned and it was issued an agent
    token): only then has AutoBot put anything there, its own SSH key first."""
    return bool(node.host_key and node.agent_token_hash)


@transaction.atomic
def node_decommission(
    *,
    node: Node,
    confirm_name: str,
    actor: str,
    reason: str = "",
    cleanup: bool = True,
    purge_data: bool = False,
) -> Node:
    """Retire a node for good: its agent token stops working, its services leave discovery, and the
    state ``decommissioned`` is terminal.

    With ``cleanup`` (the default) an enrolled node is cleared first: a ``decommission`` run of
    ``decommission.yml`` is queued (``lifecycle``; a ``decommission.requested`` event names it), which
    removes every AutoBot service and file and, last, the SLM's SSH key; the data directories too with
    ``purge_data``. The node keeps its state meanwhile and is decommissioned when the run succeeds
    (``node_decommission_complete``); a run that fails leaves it as it was, with a ``decommission.failed``
    event that says why. Without ``cleanup`` (for a machine that is gone or unreachable), and for a node
    never enrolled (nothing of AutoBot is there), the node is decommissioned at once.
    """
    if confirm_name != node.name:
        raise ValidationError({"confirm_name": [f"Type the node's name ({node.name}) to confirm."]})
    if purge_data and not cleanup:
        raise ValidationError({"purge_data": ["Data is purged by the cleanup run: purging needs cleanup."]})
    locked = Node.objects.select_for_update().get(pk=node.pk)
    if not can_transition(locked.state, NodeState.DECOMMISSIONED):
        raise TransitionNotAllowed(locked, NodeState.DECOMMISSIONED)
    enrolled = node_is_enrolled(locked)
    playbooks = lifecycle.node_playbooks()
    if cleanup and enrolled:
        if playbooks is None:
            raise Conflict(f"No cleanup runs here: decommission {node.name} without cleanup.")
        deployment = playbooks.decommission_start(
            node=locked, actor=actor, reason=reason, purge_data=purge_data
        )
        node_event(
            node=locked,
            kind=EventKind.DECOMMISSION_REQUESTED,
            message=(
                f"Decommission requested: run {deployment.pk} removes AutoBot's services and files"
                f"{' and data' if purge_data else ''} from the machine, then the SLM's SSH key; the node"
                " is decommissioned when it succeeds."
            ),
            actor=actor,
            data={"deployment": str(deployment.pk), "purge_data": purge_data, "reason": reason[:500]},
        )
        return locked
    if enrolled:
        reason = "; ".join(
            part for part in (reason, "without cleanup: AutoBot's files and the SLM's key stay on it") if part
        )
    return _decommission_now(node=locked, actor=actor, reason=reason)


@transaction.atomic
def node_decommission_complete(
    *, node: Node, actor: str, reason: str = "", deployment_id: Any = None
) -> Node:
    """The cleanup run of a decommission succeeded (called by the deployments app): decommission the node.
    A node decommissioned meanwhile (without cleanup) stays as it is."""
    locked = Node.objects.select_for_update().get(pk=node.pk)
    if locked.state == NodeState.DECOMMISSIONED:
        return locked
    done = f"cleaned up by run {deployment_id}" if deployment_id else "cleaned up"
    return _decommission_now(
        node=locked, actor=actor, reason="; ".join(part for part in (reason, done) if part)
    )


def _decommission_now(*, node: Node, actor: str, reason: str) -> Node:
    node = node_transition(
        node=node, to_state=NodeState.DECOMMISSIONED, trigger=Trigger.OPERATOR, actor=actor, reason=reason
    )
    sealed_token = Node.objects.get(pk=node.pk).agent_token_credential
    Node.objects.filter(pk=node.pk).update(agent_token_hash="", agent_token_credential=None)
    if sealed_token is not None:
        credential_delete(credential=sealed_token)
    Service.objects.filter(node=node).update(discoverable=False, state=ServiceState.UNKNOWN)
    node.agent_token_hash, node.agent_token_credential = "", None
    return node


def node_events_acknowledge(*, events: models.QuerySet[NodeEvent], actor: str) -> int:
    """Acknowledge the still open ``needs_attention`` events among ``events``; returns how many."""
    return events.filter(needs_attention=True, acknowledged_at__isnull=True).update(
        acknowledged_at=timezone.now(), acknowledged_by=actor
    )


# --------------------------------------------------------------------------------------------------
# Host keys


@transaction.atomic
def node_host_key_capture(
    *, node: Node, key_type: str, key_base64: str, fingerprint: str, actor: str
) -> Node:
    """Remember a host key seen on first contact, to be accepted by an operator before it is pinned."""
    Node.objects.filter(pk=node.pk).update(
        pending_host_key_type=key_type, pending_host_key=key_base64, pending_host_key_fingerprint=fingerprint
    )
    node.pending_host_key_type, node.pending_host_key = key_type, key_base64
    node.pending_host_key_fingerprint = fingerprint
    node_event(
        node=node,
        kind=EventKind.HOST_KEY_CAPTURED,
        message=f"Host key {key_type} {fingerprint} seen; an operator must accept it before enrollment.",
        actor=actor,
        data={"fingerprint": fingerprint, "type": key_type},
        needs_attention=True,
    )
    return node


@transaction.atomic
def node_host_key_accept(*, node: Node, fingerprint: str, actor: str) -> Node:
    """Pin the pending host key; the operator repeats its fingerprint, so they accept the key they
    checked out of band, not whatever the network showed."""
    node = Node.objects.select_for_update().get(pk=node.pk)
    if node.host_key:
        raise Conflict(f"{node.name} already has a pinned host key ({node.host_key_fingerprint}).")
    if not node.pending_host_key:
        raise Conflict(f"No host key of {node.name} is waiting for acceptance; test the connection first.")
    if fingerprint.strip() != node.pending_host_key_fingerprint:
        raise ValidationError({"fingerprint": ["This is not the fingerprint of the key the node presented."]})
    node.host_key_type = node.pending_host_key_type
    node.host_key = node.pending_host_key
    node.host_key_fingerprint = node.pending_host_key_fingerprint
    node.pending_host_key_type = node.pending_host_key = node.pending_host_key_fingerprint = ""
    node.save()
    NodeEvent.objects.filter(node=node, kind=EventKind.HOST_KEY_CAPTURED, acknowledged_at=None).update(
        acknowledged_at=timezone.now(), acknowledged_by=actor
    )
    node_event(
        node=node,
        kind=EventKind.HOST_KEY_ACCEPTED,
        message=f"Host key {node.host_key_fingerprint} pinned.",
        actor=actor,
        data={"fingerprint": node.host_key_fingerprint},
    )
    return node


def node_host_key_pin_supplied(
    *, node: Node, key_type: str, key_base64: str, fingerprint: str, actor: str
) -> Node:
    """Pin a key whose fingerprint the operator supplied up front and the node presented."""
    node_host_key_capture(
        node=node, key_type=key_type, key_base64=key_base64, fingerprint=fingerprint, actor=actor
    )
    return node_host_key_accept(node=node, fingerprint=fingerprint, actor=actor)


def node_host_key_mismatch(*, node: Node, presented_fingerprint: str, actor: str) -> NodeEvent:
    """A node presented another key than the pinned one: possible man in the middle. Critical, shown
    on the fleet overview until acknowledged; the connection has been refused."""
    return node_event(
        node=node,
        kind=EventKind.HOST_KEY_CHANGED,
        severity=Severity.CRITICAL,
        message=(
            f"Host key changed: pinned {node.host_key_fingerprint}, presented {presented_fingerprint}."
            " The connection was refused."
        ),
        actor=actor,
        data={"pinned": node.host_key_fingerprint, "presented": presented_fingerprint},
        needs_attention=True,
    )


# --------------------------------------------------------------------------------------------------
# Agent tokens and heartbeats


def node_agent_token_issue(*, node: Node, actor: str) -> str:
    """A new agent token for ``node`` (the old one stops working). Returned once; stored hashed."""
    if node.state == NodeState.DECOMMISSIONED:
        raise Conflict(f"{node.name} is decommissioned.")
    token = token_new(AGENT_TOKEN_PREFIX)
    Node.objects.filter(pk=node.pk).update(agent_token_hash=token_hash(token))
    node.agent_token_hash = token_hash(token)
    node_event(node=node, kind=EventKind.AGENT_TOKEN_ISSUED, message="Agent token issued.", actor=actor)
    return token


@dataclass(frozen=True)
class HeartbeatResult:
    accepted: bool
    duplicate: bool
    sequence: int
    state: str


@dataclass(frozen=True)
class _Stored:
    """What storing a heartbeat saw of its node (values from before the heartbeat) and whether the
    heartbeat was new."""

    state: str
    services_digest: str
    stored: bool


def heartbeat_receive(*, node_id, token: str, heartbeat: dict[str, Any]) -> HeartbeatResult | None:
    """Authenticate a node's agent by its token and store its validated heartbeat; ``None`` when the node
    does not exist or the token is not its token (nothing is stored then).

    The token's hash is compared inside the statement that stores the heartbeat, so an authenticated,
    unchanged heartbeat costs PostgreSQL one round trip (see ``_heartbeat_store``).
    """
    stored = _heartbeat_store(node_id=node_id, agent_token_hash=token_hash(token), heartbeat=heartbeat)
    if stored is None:
        return None
    return _heartbeat_after_store(node_id=node_id, heartbeat=heartbeat, stored=stored)


def heartbeat_ingest(*, node: Node, heartbeat: dict[str, Any]) -> HeartbeatResult:
    """Store one validated heartbeat of an already authenticated ``node``."""
    stored = _heartbeat_store(node_id=node.pk, agent_token_hash=None, heartbeat=heartbeat)
    if stored is None:
        raise Node.DoesNotExist(f"No node {node.pk}.")
    return _heartbeat_after_store(node_id=node.pk, heartbeat=heartbeat, stored=stored)


def _heartbeat_after_store(*, node_id, heartbeat: dict[str, Any], stored: _Stored) -> HeartbeatResult:
    """The rare follow-ups of a new heartbeat: service rows when the reported services changed, and the
    online/degraded transitions its role report asks for. Heartbeats never move a node out of an
    operator-owned state (``states.OBSERVATION_LOCKED``)."""
    sequence = heartbeat["sequence"]
    if not stored.stored:
        return HeartbeatResult(accepted=True, duplicate=True, sequence=sequence, state=stored.state)
    digest = _services_digest(heartbeat)
    if digest != stored.services_digest:
        # After the sample, in its own transaction: were it to fail, the stored digest still differs,
        # so the node's next heartbeat does it again.
        with transaction.atomic():
            node = Node.objects.select_for_update().only("id", "name").get(pk=node_id)
            _services_upsert(node=node, heartbeat=heartbeat)
            Node.objects.filter(pk=node_id).update(services_digest=digest)
    state = stored.state
    stopped = sorted(report["role"] for report in heartbeat.get("roles", []) if not report["running"])
    if state == NodeState.DEGRADED and not stopped:
        state = node_transition(
            node=Node(pk=node_id),
            to_state=NodeState.ONLINE,
            trigger=Trigger.HEARTBEAT,
            actor="agent",
            reason="agent reports all roles running",
        ).state
    elif state == NodeState.ONLINE and stopped:
        state = node_transition(
            node=Node(pk=node_id),
            to_state=NodeState.DEGRADED,
            trigger=Trigger.HEARTBEAT,
            actor="agent",
            reason=f"agent reports {', '.join(stopped)} not running",
        ).state
    return HeartbeatResult(accepted=True, duplicate=False, sequence=sequence, state=state)


# The hottest write path of the SLM (every node, every 30 s), in SQL rather than the ORM: building the
# ORM's three queries cost more CPU than PostgreSQL spent running them (bench/heartbeats.py). A new
# sequence advances the node and inserts the sample; a sequence at or below the node's last one is a
# replay from the agent's disk buffer: acknowledged, not stored again. The row lock taken by the UPDATE
# settles two copies of one heartbeat racing (the second sees the advanced sequence and stores nothing);
# the unique (node, sequence) constraint stays as the last guard.
# PostgreSQL: one statement, so one round trip in autocommit. All parts of a WITH see the same snapshot:
# ``node`` gives the values from before the update. A NULL token hash skips the token check (a caller
# that has authenticated the node already). ``relaxed`` turns off synchronous commit for this
# transaction only: waiting for the WAL flush (3.6 ms a commit on this machine's disk) was most of a
# heartbeat's time. A PostgreSQL crash can then lose the last fraction of a second of acknowledged
# samples (at most three times ``wal_writer_delay``), never corrupt anything; every other write of the
# SLM keeps the server's setting. A lost sample is a gap in a chart: the next heartbeat, 30 s later,
# sets the node's last heartbeat again.
_STORE_POSTGRESQL = """
    WITH relaxed AS (
        SELECT set_config('synchronous_commit', 'off', true)
    ), node AS (
        SELECT id, state, services_digest FROM fleet_node CROSS JOIN relaxed
        WHERE id = %(node_id)s AND (%(token_hash)s::text IS NULL OR agent_token_hash = %(token_hash)s)
    ), advanced AS (
        UPDATE fleet_node AS target
        SET last_heartbeat_at = %(now)s, last_heartbeat_sequence = %(sequence)s,
            agent_version = %(agent_version)s
        FROM node WHERE target.id = node.id AND target.last_heartbeat_sequence < %(sequence)s
        RETURNING target.id
    ), sample AS (
        INSERT INTO fleet_heartbeatsample (node_id, sequence, sent_at, received_at, cpu_percent,
            memory_percent, disk_percent, load_1m, uptime_seconds)
        SELECT id, %(sequence)s, %(sent_at)s, %(now)s, %(cpu)s, %(memory)s, %(disk)s, %(load)s, %(uptime)s
        FROM advanced
        ON CONFLICT (node_id, sequence) DO NOTHING
        RETURNING 1
    )
    SELECT node.state, node.services_digest, EXISTS (SELECT 1 FROM sample) FROM node
"""
# Any other database (SQLite): the same three steps as separate statements in one transaction.
_SELECT_PORTABLE = """
    SELECT state, services_digest FROM fleet_node
    WHERE id = %(node_id)s AND (%(token_hash)s IS NULL OR agent_token_hash = %(token_hash)s)
"""
_ADVANCE_PORTABLE = """
    UPDATE fleet_node
    SET last_heartbeat_at = %(now)s, last_heartbeat_sequence = %(sequence)s, agent_version = %(agent_version)s
    WHERE id = %(node_id)s AND last_heartbeat_sequence < %(sequence)s
"""
_INSERT_PORTABLE = """
    INSERT INTO fleet_heartbeatsample (node_id, sequence, sent_at, received_at, cpu_percent, memory_percent,
        disk_percent, load_1m, uptime_seconds)
    VALUES (%(node_id)s, %(sequence)s, %(sent_at)s, %(now)s, %(cpu)s, %(memory)s, %(disk)s, %(load)s,
        %(uptime)s)
"""


def _heartbeat_store(
    *, node_id, agent_token_hash: str | None, heartbeat: dict[str, Any], portable: bool = False
) -> _Stored | None:
    """Store the heartbeat if its sequence is new; ``None`` when no node ``node_id`` has that token hash
    (``agent_token_hash=None``: any node ``node_id``). ``portable`` forces the statement-by-statement
    way on PostgreSQL too (the tests run both)."""
    connection = connections[Node.objects.db]
    ops = connection.ops
    params = {
        "node_id": Node._meta.pk.get_db_prep_value(node_id, connection),
        "token_hash": agent_token_hash,
        "sequence": heartbeat["sequence"],
        "now": ops.adapt_datetimefield_value(timezone.now()),
        "sent_at": ops.adapt_datetimefield_value(_aware_datetime(heartbeat["sent_at"])),
        "agent_version": heartbeat["agent_version"],
        "cpu": heartbeat["cpu_percent"],
        "memory": heartbeat["memory_percent"],
        "disk": heartbeat["disk_percent"],
        "load": heartbeat["load_1m"],
        "uptime": heartbeat["uptime_seconds"],
    }
    if connection.vendor == "postgresql" and not portable:
        with connection.cursor() as cursor:
            cursor.execute(_STORE_POSTGRESQL, params)
            row = cursor.fetchone()
        return None if row is None else _Stored(state=row[0], services_digest=row[1], stored=row[2])
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(_SELECT_PORTABLE, params)
        row = cursor.fetchone()
        if row is None:
            return None
        cursor.execute(_ADVANCE_PORTABLE, params)
        advanced = cursor.rowcount == 1
        if advanced:
            cursor.execute(_INSERT_PORTABLE, params)
    return _Stored(state=row[0], services_digest=row[1], stored=advanced)


def _aware_datetime(value: datetime | str) -> datetime:
    """A heartbeat's time as an aware datetime (the contract gives one; a JSON dict gives ISO text)."""
    parsed = parse_datetime(value) if isinstance(value, str) else value
    if parsed is None:
        raise ValidationError({"sent_at": ["Not an ISO 8601 date and time."]})
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


def _services_digest(heartbeat: dict[str, Any]) -> str:
    payload = json.dumps(
        [heartbeat.get("services", []), heartbeat.get("roles", [])], sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _services_upsert(*, node: Node, heartbeat: dict[str, Any]) -> None:
    roles_by_service = {
        service: (definition.name, definition.discoverable.get(service))
        for definition in ROLES.values()
        for service in definition.services
    }
    role_ids = dict(Role.objects.values_list("name", "id"))
    reported = {item["name"]: item for item in heartbeat.get("services", [])}
    existing = {service.name: service for service in Service.objects.filter(node=node)}
    for name, item in reported.items():
        role_name, discover_protocol = roles_by_service.get(name, (None, None))
        values = {
            "port": item.get("port"),
            "protocol": discover_protocol or item.get("protocol") or "tcp",
            "state": item["state"],
            "discoverable": discover_protocol is not None and item.get("port") is not None,
            "role_id": role_ids.get(role_name) if role_name else None,
        }
        service = existing.get(name)
        if service is None:
            Service.objects.create(node=node, name=name, **values)
        elif any(getattr(service, key) != value for key, value in values.items()):
            Service.objects.filter(pk=service.pk).update(**values, updated_at=timezone.now())
    vanished = set(existing) - set(reported)
    if vanished:
        Service.objects.filter(node=node, name__in=vanished).update(state=ServiceState.UNKNOWN)
    reports = {report["role"]: report for report in heartbeat.get("roles", [])}
    for node_role in NodeRole.objects.filter(node=node, role__name__in=reports).select_related("role"):
        report = reports[node_role.role.name]
        changes: dict[str, Any] = {}
        if report.get("version") and node_role.actual_version != report["version"]:
            changes["actual_version"] = report["version"]
        # The agent's word on a role it runs; a deployment in progress owns the status meanwhile.
        if node_role.status != NodeRoleStatus.DEPLOYING:
            status = NodeRoleStatus.ACTIVE if report["running"] else NodeRoleStatus.FAILED
            if node_role.status != status:
                changes["status"] = status
        if changes:
            NodeRole.objects.filter(pk=node_role.pk).update(**changes)


def node_heartbeat_watch(*, now=None) -> list[Node]:
    """Online nodes whose agent has been silent for three intervals become ``degraded`` (audited, trigger
    ``health``); a later heartbeat that reports every role running brings them back online."""
    from datetime import timedelta

    from slm_project.fleet.constants import HEARTBEAT_INTERVAL_SECONDS

    now = now or timezone.now()
    overdue = now - timedelta(seconds=3 * HEARTBEAT_INTERVAL_SECONDS)
    silent = Node.objects.filter(state=NodeState.ONLINE).filter(
        models.Q(last_heartbeat_at__lt=overdue)
        | models.Q(last_heartbeat_at__isnull=True, state_changed_at__lt=overdue)
    )
    degraded = []
    for node in silent:
        seen = (
            f"last heartbeat {node.last_heartbeat_at:%Y-%m-%d %H:%M:%S}Z"
            if node.last_heartbeat_at
            else "no heartbeat yet"
        )
        try:
            degraded.append(
                node_transition(
                    node=node,
                    to_state=NodeState.DEGRADED,
                    trigger=Trigger.HEALTH,
                    actor="heartbeat-watch",
                    reason=f"agent silent ({seen})",
                )
            )
        except TransitionNotAllowed:
            continue  # an operator moved it meanwhile
    return degraded


def node_mark_error(*, node: Node, reason: str, actor: str) -> Node:
    return node_transition(
        node=node, to_state=NodeState.ERROR, trigger=Trigger.SYSTEM, actor=actor, reason=reason
    )
