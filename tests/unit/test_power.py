"""Stop, start and reboot: durable jobs on the fake libvirt, whose guests answer the ACPI power
button at once (or never: ``hv.acpi_ignored``). Calls are counted by the fake hypervisor itself."""
import threading

import pytest

from agent import exception
from agent.compute import power as powermod
from tests.unit import fakelibvirt
from tests.unit.conftest import Agent, boot_spec, wait_until

U1 = '11111111-2222-3333-4444-555555555555'


def _booted(agent, uuid=U1, **spec):
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(uuid, **spec))['job_id'])
    agent.wait_state(uuid, 'active')
    agent.reporter.flush(10)
    return agent.manager.instances[uuid]


def _run(agent, request):
    """Run a power request to its end; the job and the libvirt calls the fake counted."""
    hv = agent.hv
    before = len(hv.calls)
    job = agent.wait_job(request()['job_id'])
    return job, hv.calls[before:]


def test_a_graceful_stop_is_one_call_and_the_state_comes_from_the_event(agent, hv):
    _booted(agent)
    job, calls = _run(agent, lambda: agent.manager.requests.stop_instance(U1))
    assert (job['state'], job['result'], job['kind']) == ('done', 'graceful', 'stop')
    assert calls == ['shutdownFlags'] and job['libvirt_calls'] == 1
    agent.wait_reported(U1, 'stopped')
    inst = agent.manager.requests.get_instance(U1)
    assert (inst['power_state'], inst['task'], inst['power_job']) == ('shutdown', None, None)
    assert hv.domains[U1].run_state == fakelibvirt.VIR_DOMAIN_SHUTOFF    # defined, kept


def test_a_guest_that_ignores_the_button_is_pressed_again_then_stopped_at_once(agent, hv):
    _booted(agent)
    hv.acpi_ignored.add(U1)
    job, calls = _run(agent, lambda: agent.manager.requests.stop_instance(U1, timeout=1))
    assert (job['state'], job['result']) == ('done', 'forced')
    assert calls.count('shutdownFlags') >= 2 and calls[-1] == 'destroy'
    assert 'undefine' not in calls and U1 in hv.domains
    agent.wait_reported(U1, 'stopped')


def test_a_stop_with_no_timeout_destroys_at_once(agent, hv):
    _booted(agent)
    job, calls = _run(agent, lambda: agent.manager.requests.stop_instance(U1, timeout=0))
    assert (job['result'], calls) == ('at once', ['destroy'])
    agent.wait_state(U1, 'stopped')


def test_start_is_one_call_and_the_instance_is_active_again(agent, hv):
    _booted(agent)
    agent.wait_job(agent.manager.requests.stop_instance(U1)['job_id'])
    agent.wait_state(U1, 'stopped')
    job, calls = _run(agent, lambda: agent.manager.requests.start_instance(U1))
    assert (job['state'], job['result'], calls) == ('done', 'started', ['createWithFlags'])
    agent.wait_reported(U1, 'active')


def test_a_guests_own_power_off_is_seen_and_the_instance_starts_again(agent, hv):
    _booted(agent)
    hv.guest_poweroff(U1)
    agent.wait_reported(U1, 'stopped')
    assert agent.manager.requests.get_instance(U1)['power_job'] is None      # no job did it
    job, calls = _run(agent, lambda: agent.manager.requests.start_instance(U1))
    assert job['state'] == 'done' and calls == ['createWithFlags']
    agent.wait_state(U1, 'active')


@pytest.mark.parametrize('operation', ['start', 'stop', 'reboot'])
def test_an_operation_the_state_does_not_allow_is_refused_and_changes_nothing(
        agent, hv, operation):
    inst = _booted(agent)
    if operation != 'start':
        agent.wait_job(agent.manager.requests.stop_instance(U1)['job_id'])
        agent.wait_state(U1, 'stopped')
        agent.reporter.flush(10)
    before = (inst.to_dict(), len(hv.calls), agent.manager.stats()['jobs_total'],
              len(agent.journal.load()))
    with pytest.raises(exception.InstanceInvalidState) as err:
        getattr(agent.manager.requests, operation + '_instance')(U1)
    assert '%s is %s: it cannot %s' % (U1, inst.vm_state, operation) in str(err.value)
    agent.journal.flush()
    assert (inst.to_dict(), len(hv.calls), agent.manager.stats()['jobs_total'],
            len(agent.journal.load())) == before


def test_a_soft_reboot_is_one_call_and_ends_with_the_guests_reset(agent, hv):
    _booted(agent)
    job, calls = _run(agent, lambda: agent.manager.requests.reboot_instance(U1))
    assert (job['state'], job['result'], calls) == ('done', 'soft', ['reboot'])
    assert agent.manager.instances[U1].reboots == 1
    assert agent.manager.requests.get_instance(U1)['vm_state'] == 'active'


def test_a_soft_reboot_the_guest_ignores_falls_back_to_a_reset(agent, hv):
    _booted(agent)
    hv.acpi_ignored.add(U1)
    job, calls = _run(agent, lambda: agent.manager.requests.reboot_instance(U1))
    assert (job['state'], job['result']) == ('done', 'hard (soft timed out)')
    assert calls[0] == 'reboot' and calls[-1] == 'reset'


def test_a_hard_reboot_resets_a_running_guest_and_starts_a_stopped_one(agent, hv):
    _booted(agent)
    job, calls = _run(agent, lambda: agent.manager.requests.reboot_instance(U1, hard=True))
    assert (job['result'], calls) == ('hard', ['reset'])
    agent.wait_job(agent.manager.requests.stop_instance(U1, timeout=0)['job_id'])
    job, calls = _run(agent, lambda: agent.manager.requests.reboot_instance(U1, hard=True))
    assert (job['result'], calls) == ('hard (started)', ['reset', 'createWithFlags'])
    agent.wait_state(U1, 'active')


def test_one_job_per_instance_the_same_request_answers_the_running_job(agent, hv):
    _booted(agent)
    hv.acpi_ignored.add(U1)
    first = agent.manager.requests.stop_instance(U1, timeout=2)
    again = agent.manager.requests.stop_instance(U1, timeout=2)
    assert again == dict(first, existing=True)
    with pytest.raises(exception.InstanceBusy, match='is stopping'):
        agent.manager.requests.reboot_instance(U1, hard=True)
    with pytest.raises(exception.InstanceBusy):
        agent.manager.requests.stop_instance(U1, timeout=0)      # a different stop
    assert agent.wait_job(first['job_id'])['result'] == 'forced'


def test_a_delete_supersedes_a_stop_that_waits_for_the_guest(agent, hv):
    _booted(agent)
    hv.acpi_ignored.add(U1)
    stop = agent.manager.requests.stop_instance(U1, timeout=60)
    wait_until(lambda: 'shutdownFlags' in hv.calls, what='the stop to press the button')
    delete = agent.manager.requests.delete_instance(U1)
    job = agent.wait_job(stop['job_id'])          # long before its 60 s
    assert job['state'] == 'failed' and 'superseded' in job['reason']
    assert agent.wait_job(delete['job_id'])['state'] == 'done'
    assert U1 not in hv.domains and U1 not in agent.manager.instances
    agent.wait_reported(U1, 'deleted')


def test_power_requests_for_unknown_or_deleting_instances_are_refused(agent, hv):
    with pytest.raises(exception.InstanceNotFound):
        agent.manager.requests.start_instance(U1)
    _booted(agent)
    hv.gates['destroy'] = gate = threading.Event()
    delete = agent.manager.requests.delete_instance(U1)
    try:
        with pytest.raises(exception.InstanceBusy, match='being deleted'):
            agent.manager.requests.stop_instance(U1)
    finally:
        gate.set()
    agent.wait_job(delete['job_id'])


def test_a_stop_timeout_beyond_the_nodes_limit_is_refused(agent, hv):
    _booted(agent)
    with pytest.raises(exception.InvalidSpec, match='at most 60 seconds'):
        agent.manager.requests.stop_instance(U1, timeout=61)
    assert agent.manager.requests.get_instance(U1)['task'] is None


# -- kill -9 in the middle, then a restart ----------------------------------------------------

def _killed_during(conf, hv, request, call):
    """Agent A accepts the request, the guest ignores the button, A dies after ``call``."""
    a = Agent(conf, hv, power=powermod.PowerOptions(stop_timeout=30, acpi_retry_interval=30,
                                                    reboot_timeout=30))
    _booted(a)
    hv.acpi_ignored.add(U1)
    job_id = request(a.manager.requests)['job_id']
    wait_until(lambda: call in hv.calls, what=call)
    a.journal.flush()
    a.crash()
    return a, job_id


def test_a_stop_interrupted_by_a_restart_runs_again_and_ends(conf, hv):
    a, job_id = _killed_during(conf, hv, lambda m: m.stop_instance(U1, timeout=1),
                               'shutdownFlags')
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        job = b.wait_job(job_id)
        assert (job['state'], job['result'], job['attempts']) == ('done', 'forced', 2)
        b.wait_reported(U1, 'stopped')
        assert hv.domains[U1].run_state == fakelibvirt.VIR_DOMAIN_SHUTOFF
        assert b.manager.reconciled['resume_power'] == 1
        # Busy at start-up (the audit leaves it alone), yet counted in the usage.
        assert b.manager.tracker.claim_of(U1) == a.manager.tracker.claim_of(U1) is not None
    finally:
        b.stop()


def test_a_reboot_interrupted_by_a_restart_is_settled_by_the_domains_state(conf, hv):
    a, job_id = _killed_during(conf, hv, lambda m: m.reboot_instance(U1), 'reboot')
    before = len(hv.calls)
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        job = b.wait_job(job_id)
        assert job['state'] == 'done' and 'the domain runs' in job['result']
        assert 'reboot' not in hv.calls[before:] and 'reset' not in hv.calls[before:]
        assert b.manager.requests.get_instance(U1)['vm_state'] == 'active'
        assert b.manager.requests.get_instance(U1)['task'] is None
        assert b.manager.tracker.claim_of(U1) == a.manager.tracker.claim_of(U1) is not None
    finally:
        b.stop()


def test_a_power_job_whose_domain_vanished_during_the_restart_fails(conf, hv):
    a, job_id = _killed_during(conf, hv, lambda m: m.stop_instance(U1, timeout=5),
                               'shutdownFlags')
    del hv.domains[U1]
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        job = b.manager.requests.get_job(job_id)
        assert job['state'] == 'failed' and 'no longer holds' in job['reason']
        assert b.manager.requests.get_instance(U1)['vm_state'] == 'error'
    finally:
        b.stop()
