"""The instance state machine (agent.compute.states) and the one way state changes."""
import pytest

from agent import exception
from agent.compute import states
from tests.unit.conftest import boot_spec

U1 = '11111111-2222-3333-4444-555555555555'


@pytest.mark.parametrize('current, new', [
    (states.BUILDING, states.ACTIVE), (states.BUILDING, states.ERROR),
    (states.ACTIVE, states.STOPPED), (states.STOPPED, states.ACTIVE),
    (states.ACTIVE, states.PAUSED), (states.PAUSED, states.ACTIVE),
    (states.ERROR, states.ACTIVE), (states.ACTIVE, states.DELETING),
    (states.DELETING, states.DELETED), (states.DELETING, states.ERROR),
    (states.ACTIVE, states.ACTIVE),
])
def test_the_transitions_the_agent_makes_are_allowed(current, new):
    assert states.allowed(current, new)
    states.check(U1, current, new)


@pytest.mark.parametrize('current, new', [
    (states.DELETED, states.ACTIVE), (states.DELETED, states.DELETING),
    (states.DELETING, states.ACTIVE), (states.ERROR, states.STOPPED),
    (states.ACTIVE, states.BUILDING), (states.STOPPED, states.BUILDING),
])
def test_any_other_transition_is_refused_naming_both_states(current, new):
    with pytest.raises(exception.InstanceInvalidState) as err:
        states.check(U1, current, new)
    assert '%s is %s: it cannot become %s' % (U1, current, new) in str(err.value)


def test_every_state_has_a_row_and_deleted_is_terminal():
    assert set(states.TRANSITIONS) == set(states.ALL)
    assert all(t <= set(states.ALL) for t in states.TRANSITIONS.values())
    assert states.TRANSITIONS[states.DELETED] == frozenset()


def test_a_refused_change_changes_nothing_and_reports_nothing(agent):
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(U1))['job_id'])
    agent.wait_reported(U1, 'active')
    inst = agent.manager.instances[U1]
    before = (inst.vm_state, inst.fault, inst.seq)
    with pytest.raises(exception.InstanceInvalidState):
        agent.manager.core.change(inst, vm_state=states.BUILDING, fault='x')
    assert (inst.vm_state, inst.fault, inst.seq) == before


@pytest.mark.parametrize('current, operation, allowed', [
    (states.ACTIVE, states.STOP, True), (states.PAUSED, states.STOP, True),
    (states.STOPPED, states.STOP, False), (states.BUILDING, states.STOP, False),
    (states.STOPPED, states.START, True), (states.ACTIVE, states.START, False),
    (states.ERROR, states.START, False), (states.ACTIVE, states.REBOOT, True),
    (states.STOPPED, states.REBOOT, False), (states.ERROR, states.HARD_REBOOT, True),
    (states.STOPPED, states.HARD_REBOOT, True), (states.DELETING, states.HARD_REBOOT, False),
])
def test_operations_are_asked_only_in_the_states_the_table_names(current, operation, allowed):
    if allowed:
        states.check_operation(U1, current, operation)
        return
    with pytest.raises(exception.InstanceInvalidState) as err:
        states.check_operation(U1, current, operation)
    assert '%s is %s: it cannot %s' % (U1, current, operation.replace('_', ' ')) \
        in str(err.value)


def test_every_operation_ends_in_a_state_its_source_states_may_reach():
    # what each operation's job leaves the instance in, by the events that follow
    ends = {states.STOP: states.STOPPED, states.START: states.ACTIVE,
            states.REBOOT: states.ACTIVE, states.HARD_REBOOT: states.ACTIVE}
    for operation, sources in states.OPERATIONS.items():
        assert all(states.allowed(s, ends[operation]) for s in sources), operation
