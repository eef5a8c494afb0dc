"""The node state machine: the only place that knows which state may follow which.

    pending → enrolling → online ⇄ degraded → error
    online | degraded → draining → maintenance → recovering → online
    any state → decommissioned (terminal)

plus the recoveries an operator needs: a failed enrollment (``error``) or a never-enrolled node may be
enrolled again, and a node in ``error`` may be recovered. Every change is recorded in
``NodeStateTransition`` with trigger, actor and reason; an invalid one raises ``TransitionNotAllowed``
naming the allowed targets. Heartbeats and health data never move a node out of a state an operator or
a workflow owns (maintenance, draining, pending, enrolling, decommissioned).
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from service_kit.errors import Conflict
from slm_project.fleet.choices import EventKind, NodeState, Severity, Trigger
from slm_project.fleet.models import Node, NodeEvent, NodeStateTransition

S = NodeState

ALLOWED: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.ENROLLING}),
    S.ENROLLING: frozenset({S.ONLINE, S.ERROR}),
    S.ONLINE: frozenset({S.DEGRADED, S.DRAINING, S.ERROR}),
    S.DEGRADED: frozenset({S.ONLINE, S.ERROR, S.DRAINING}),
    S.ERROR: frozenset({S.ENROLLING, S.RECOVERING}),
    S.DRAINING: frozenset({S.MAINTENANCE}),
    S.MAINTENANCE: frozenset({S.RECOVERING}),
    S.RECOVERING: frozenset({S.ONLINE, S.ERROR}),
    S.DECOMMISSIONED: frozenset(),
}
# Decommissioning is allowed from every state but itself.
for _state, _targets in list(ALLOWED.items()):
    if _state != S.DECOMMISSIONED:
        ALLOWED[_state] = _targets | {S.DECOMMISSIONED}

# States that only an operator or a running workflow may leave: observations (heartbeats, health
# checks) never move a node out of them.
OBSERVATION_LOCKED = frozenset({S.PENDING, S.ENROLLING, S.DRAINING, S.MAINTENANCE, S.DECOMMISSIONED})
OBSERVATION_TRIGGERS = frozenset({Trigger.HEARTBEAT, Trigger.HEALTH})

SEVERITY_OF = {S.ERROR: Severity.CRITICAL, S.DEGRADED: Severity.WARNING, S.DECOMMISSIONED: Severity.WARNING}


class TransitionNotAllowed(Conflict):
    default_code = "transition_not_allowed"

    def __init__(self, node: Node, to_state: str) -> None:
        allowed = sorted(ALLOWED[node.state])
        super().__init__(
            f"{node.name} cannot go from {node.state} to {to_state};"
            f" allowed: {', '.join(allowed) if allowed else 'none (terminal state)'}."
        )
        self.allowed = allowed


def can_transition(from_state: str, to_state: str) -> bool:
    return to_state in ALLOWED.get(from_state, frozenset())


def observation_may_change(state: str) -> bool:
    """Whether heartbeats or health data may move a node in ``state``."""
    return state not in OBSERVATION_LOCKED


@transaction.atomic
def node_transition(*, node: Node, to_state: str, trigger: str, actor: str, reason: str = "") -> Node:
    """Move ``node`` to ``to_state``, recording the transition and an event.

    The row is locked and re-read first, so two concurrent transitions serialise and the second one is
    judged against the state the first one left.
    """
    locked = Node.objects.select_for_update().get(pk=node.pk)
    if trigger in OBSERVATION_TRIGGERS and not observation_may_change(locked.state):
        raise TransitionNotAllowed(locked, to_state)
    if not can_transition(locked.state, to_state):
        raise TransitionNotAllowed(locked, to_state)
    from_state = locked.state
    now = timezone.now()
    locked.state = to_state
    locked.state_reason = reason[:500]
    locked.state_changed_at = now
    locked.save(update_fields=["state", "state_reason", "state_changed_at", "updated_at"])
    NodeStateTransition.objects.create(
        node=locked,
        from_state=from_state,
        to_state=to_state,
        trigger=trigger,
        actor=actor,
        reason=reason[:500],
    )
    NodeEvent.objects.create(
        node=locked,
        kind=EventKind.STATE_CHANGED,
        severity=SEVERITY_OF.get(to_state, Severity.INFO),
        message=f"{from_state} → {to_state}" + (f": {reason}" if reason else ""),
        data={"from": from_state, "to": to_state, "trigger": trigger},
        actor=actor,
        needs_attention=to_state == S.ERROR,
    )
    node.state, node.state_reason, node.state_changed_at = locked.state, locked.state_reason, now
    return locked
