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
from typing import Any

from django.db import IntegrityError, models, transaction
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from service_kit.errors import Conflict
from slm_project.access.tokens import token_hash, token_new
from slm_project.fleet.choices import EventKind, NodeRoleStatus, NodeState, ServiceState, Severity, Trigger
from slm_project.fleet.constants import AGENT_TOKEN_PREFIX
from slm_project.fleet.models import HeartbeatSample, Node, NodeEvent, NodeRole, Role, Service
from slm_project.fleet.registry import ROLES
from slm_project.fleet.states import TransitionNotAllowed, node_transition
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


@transaction.atomic
def node_decommission(*, node: Node, confirm_name: str, actor: str, reason: str = "") -> Node:
    """Terminal: the node's agent token stops working, its services leave discovery."""
    if confirm_name != node.name:
        raise ValidationError({"confirm_name": [f"Type the node's name ({node.name}) to confirm."]})
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


def heartbeat_ingest(*, node: Node, heartbeat: dict[str, Any]) -> HeartbeatResult:
    """Store one validated heartbeat.

    Lean on purpose (it is the hottest write path): one sample insert, one node update, and the
    service rows only when the reported services changed. A sequence at or below the last stored one
    is a replay from the agent's buffer: acknowledged, not stored again. Heartbeats never move a node
    out of an operator-owned state (``states.OBSERVATION_LOCKED``).
    """
    sequence = heartbeat["sequence"]
    if sequence <= node.last_heartbeat_sequence:
        return HeartbeatResult(accepted=True, duplicate=True, sequence=sequence, state=node.state)
    now = timezone.now()
    digest = _services_digest(heartbeat)
    try:
        with transaction.atomic():
            # The unique (node, sequence) constraint settles a race between two copies of one heartbeat.
            HeartbeatSample.objects.create(
                node=node,
                sequence=sequence,
                sent_at=heartbeat["sent_at"],
                received_at=now,
                cpu_percent=heartbeat["cpu_percent"],
                memory_percent=heartbeat["memory_percent"],
                disk_percent=heartbeat["disk_percent"],
                load_1m=heartbeat["load_1m"],
                uptime_seconds=heartbeat["uptime_seconds"],
            )
            updates: dict[str, Any] = {
                "last_heartbeat_at": now,
                "last_heartbeat_sequence": sequence,
                "agent_version": heartbeat["agent_version"],
            }
            if digest != node.services_digest:
                _services_upsert(node=node, heartbeat=heartbeat)
                updates["services_digest"] = digest
            # Only a newer sequence may advance the node (an agent's buffered heartbeats may race).
            Node.objects.filter(pk=node.pk, last_heartbeat_sequence__lt=sequence).update(**updates)
    except IntegrityError:
        return HeartbeatResult(accepted=True, duplicate=True, sequence=sequence, state=node.state)
    state = node.state
    stopped = sorted(report["role"] for report in heartbeat.get("roles", []) if not report["running"])
    if node.state == NodeState.DEGRADED and not stopped:
        state = node_transition(
            node=node,
            to_state=NodeState.ONLINE,
            trigger=Trigger.HEARTBEAT,
            actor="agent",
            reason="agent reports all roles running",
        ).state
    elif node.state == NodeState.ONLINE and stopped:
        state = node_transition(
            node=node,
            to_state=NodeState.DEGRADED,
            trigger=Trigger.HEARTBEAT,
            actor="agent",
            reason=f"agent reports {', '.join(stopped)} not running",
        ).state
    return HeartbeatResult(accepted=True, duplicate=False, sequence=sequence, state=state)


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
