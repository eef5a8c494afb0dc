"""The node state machine: every allowed transition, a sample of forbidden ones, the audit trail, and
observations (heartbeats, health) never moving a node out of an operator-owned state."""

import pytest

from shared_contracts.schemas.fleet import NodeState as ContractNodeState
from slm_project.fleet import states
from slm_project.fleet.choices import NodeState, Trigger
from slm_project.fleet.models import Node, NodeEvent, NodeStateTransition
from tests.slm.fleet.factories import make_node

S = NodeState

EXPECTED_ALLOWED = {
    (S.PENDING, S.ENROLLING),
    (S.ENROLLING, S.ONLINE),
    (S.ENROLLING, S.ERROR),
    (S.ONLINE, S.DEGRADED),
    (S.ONLINE, S.DRAINING),
    (S.ONLINE, S.ERROR),
    (S.DEGRADED, S.ONLINE),
    (S.DEGRADED, S.ERROR),
    (S.DEGRADED, S.DRAINING),
    (S.ERROR, S.ENROLLING),
    (S.ERROR, S.RECOVERING),
    (S.DRAINING, S.MAINTENANCE),
    (S.MAINTENANCE, S.RECOVERING),
    (S.RECOVERING, S.ONLINE),
    (S.RECOVERING, S.ERROR),
} | {(state, S.DECOMMISSIONED) for state in S.values if state != S.DECOMMISSIONED}

ALL_PAIRS = {(a, b) for a in S.values for b in S.values if a != b}


def test_the_table_is_exactly_the_documented_machine():
    actual = {(a, b) for a, targets in states.ALLOWED.items() for b in targets}
    assert actual == EXPECTED_ALLOWED


def test_the_enum_equals_the_contract_enum():
    assert set(NodeState.values) == {state.value for state in ContractNodeState}


def _node_in(state: str) -> Node:
    node = make_node()
    Node.objects.filter(pk=node.pk).update(state=state)
    node.refresh_from_db()
    return node


@pytest.mark.django_db
@pytest.mark.parametrize(("from_state", "to_state"), sorted(EXPECTED_ALLOWED))
def test_every_allowed_transition_is_recorded(from_state, to_state):
    node = _node_in(from_state)
    states.node_transition(
        node=node, to_state=to_state, trigger=Trigger.OPERATOR, actor="user:ops", reason="why"
    )
    node.refresh_from_db()
    assert node.state == to_state
    assert node.state_reason == "why"
    transition = NodeStateTransition.objects.get(node=node)
    assert (transition.from_state, transition.to_state) == (from_state, to_state)
    assert (transition.trigger, transition.actor, transition.reason) == ("operator", "user:ops", "why")
    assert NodeEvent.objects.filter(node=node, kind="node.state_changed").count() == 1


FORBIDDEN_SAMPLE = [
    *sorted(ALL_PAIRS - EXPECTED_ALLOWED)[::3],
    (S.DECOMMISSIONED, S.ONLINE),
    (S.PENDING, S.ONLINE),
    (S.MAINTENANCE, S.ONLINE),
    (S.DRAINING, S.ONLINE),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("from_state", "to_state"), FORBIDDEN_SAMPLE)
def test_a_forbidden_transition_raises_and_changes_nothing(from_state, to_state):
    node = _node_in(from_state)
    with pytest.raises(states.TransitionNotAllowed) as excinfo:
        states.node_transition(node=node, to_state=to_state, trigger=Trigger.OPERATOR, actor="user:ops")
    assert excinfo.value.status_code == 409
    assert excinfo.value.allowed == sorted(states.ALLOWED[from_state])
    node.refresh_from_db()
    assert node.state == from_state
    assert not NodeStateTransition.objects.filter(node=node).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("locked", sorted(states.OBSERVATION_LOCKED - {S.DECOMMISSIONED}))
@pytest.mark.parametrize("trigger", [Trigger.HEARTBEAT, Trigger.HEALTH])
def test_observations_never_move_a_node_out_of_an_operator_state(locked, trigger):
    node = _node_in(locked)
    for target in states.ALLOWED[locked]:
        with pytest.raises(states.TransitionNotAllowed):
            states.node_transition(node=node, to_state=target, trigger=trigger, actor="agent")
    node.refresh_from_db()
    assert node.state == locked


@pytest.mark.django_db
def test_the_transition_judges_the_current_row_not_a_stale_copy():
    node = make_node()
    stale = Node.objects.get(pk=node.pk)
    states.node_transition(node=node, to_state=S.ENROLLING, trigger=Trigger.OPERATOR, actor="a")
    states.node_transition(node=node, to_state=S.ERROR, trigger=Trigger.ENROLLMENT, actor="a")
    # ``stale`` still says pending; pending → enrolling would be allowed, error → enrolling is too,
    # but error → online is not, and the check uses the database row.
    with pytest.raises(states.TransitionNotAllowed):
        states.node_transition(node=stale, to_state=S.ONLINE, trigger=Trigger.OPERATOR, actor="a")


def test_every_fleet_enum_equals_its_contract_enum():
    from shared_contracts.schemas import fleet as contract
    from slm_project.fleet import choices

    for ours, theirs in [
        (choices.NodeState, contract.NodeState),
        (choices.RoleName, contract.RoleName),
        (choices.ServiceState, contract.ServiceState),
        (choices.Severity, contract.Severity),
    ]:
        assert set(ours.values) == {member.value for member in theirs}, ours.__name__
