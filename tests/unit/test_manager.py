"""The manager and libvirt driver over the stateful fake libvirt."""
import os
import threading
import time
import uuid as uuidlib

import pytest

from agent import exception
from tests.unit import fakelibvirt
from tests.unit.conftest import Agent, boot_spec, wait_until

U1 = '11111111-2222-3333-4444-555555555555'


def boot(agent, uuid=U1, **extra):
    answer = agent.manager.requests.boot_instance(boot_spec(uuid, **extra))
    return answer, agent.wait_job(answer['job_id'])


def test_boot_makes_two_libvirt_calls_and_turns_active_from_the_event(agent, hv):
    before = len(hv.calls)
    answer, job = boot(agent)
    assert answer['uuid'] == U1
    assert job['state'] == 'done' and job['reason'] is None
    agent.wait_state(U1, 'active')
    # The fake's own record, not the agent's counter: exactly define + start.
    assert hv.calls[before:] == ['defineXML', 'createWithFlags']
    assert job['libvirt_calls'] == 2
    assert job['libvirt_calls_by_op'] == {'defineXML': 1, 'createWithFlags': 1}
    agent.wait_reported(U1, 'active')
    assert agent.reports.latest(U1)['power_state'] == 'running'
    assert agent.reports.latest(U1)['active_at'] is not None


def test_boot_answers_before_libvirt_is_done(agent, hv):
    gate = hv.gates['createWithFlags'] = threading.Event()
    answer = agent.manager.requests.boot_instance(boot_spec())
    job = agent.manager.requests.get_job(answer['job_id'])
    assert job['state'] in ('queued', 'running')      # answered while create is blocked
    assert agent.manager.requests.get_instance(U1)['vm_state'] == 'building'
    gate.set()
    assert agent.wait_job(answer['job_id'])['state'] == 'done'


def test_guest_poweroff_arrives_by_event_without_any_libvirt_call(agent, hv):
    boot(agent)
    agent.wait_state(U1, 'active')
    idle_calls = len(hv.calls)
    hv.guest_poweroff(U1)
    agent.wait_reported(U1, 'stopped')
    assert agent.manager.requests.get_instance(U1)['power_state'] == 'shutdown'
    assert len(hv.calls) == idle_calls


def test_domain_xml_is_what_was_asked(agent, hv):
    boot(agent, nics=[{'type': 'user'}, {'type': 'bridge', 'bridge': 'br0',
                                         'mac': '52:54:00:00:00:01'}], image='disk.qcow2')
    xml = hv.domains[U1].xml
    assert "type=\"qemu\"" in xml or "type='qemu'" in xml
    assert '<name>ca-%s</name>' % U1 in xml
    assert 'br0' in xml and '52:54:00:00:00:01' in xml
    assert '<transient shareBacking="yes" />' in xml and 'type="qcow2"' in xml


def test_a_start_libvirt_calls_busy_is_tried_again_and_other_failures_are_not(agent, hv):
    # EAGAIN (libvirtd's cgroup BPF load interrupted during a storm): transient.
    hv.fail_next['createWithFlags'] = fakelibvirt.libvirtError(
        'failed to load cgroup BPF prog: Resource temporarily unavailable',
        fakelibvirt.VIR_ERR_SYSTEM_ERROR, int1=11)
    before = len(hv.calls)
    _, job = boot(agent)
    assert job['state'] == 'done', job
    assert hv.calls[before:] == ['defineXML', 'createWithFlags', 'createWithFlags']
    assert job['libvirt_calls_by_op'] == {'defineXML': 1, 'createWithFlags': 2}
    agent.wait_state(U1, 'active')
    # Any other system error is final: one start, then the clean-up.
    other = '22222222-2222-3333-4444-555555555555'
    hv.fail_next['createWithFlags'] = fakelibvirt.libvirtError(
        'cannot open file: Permission denied', fakelibvirt.VIR_ERR_SYSTEM_ERROR, int1=13)
    before = len(hv.calls)
    _, job = boot(agent, other)
    assert job['state'] == 'failed' and 'Permission denied' in job['reason']
    assert hv.calls[before:].count('createWithFlags') == 1 and other not in hv.domains


def test_start_failure_fails_the_job_with_libvirts_reason_and_leaves_nothing(agent, hv, conf):
    hv.fail_next['createWithFlags'] = fakelibvirt.libvirtError(
        'internal error: qemu unexpectedly closed the monitor: could not load kernel')
    fakelibvirt.hold_events()   # the clean-up's UNDEFINED event arrives after the job ended
    _, job = boot(agent)
    fakelibvirt.release_events()
    assert job['state'] == 'failed'
    assert 'could not load kernel' in job['reason']
    assert U1 not in hv.domains
    assert not os.path.exists(os.path.join(conf.instances_path, U1))
    agent.wait_reported(U1, 'error')
    # That late UNDEFINED must not replace libvirt's reason with "undefined outside the agent".
    # Events arrive in order: once a later boot is active, that UNDEFINED was handled.
    later = '22222222-2222-3333-4444-555555555555'
    boot(agent, later)
    agent.wait_state(later, 'active')
    assert 'could not load kernel' in agent.manager.requests.get_instance(U1)['fault']
    assert 'could not load kernel' in agent.reports.latest(U1)['fault']


def test_a_domain_undefined_behind_the_agents_back_is_an_error(agent, hv):
    boot(agent)
    agent.wait_state(U1, 'active')
    hv.domains[U1].run_state = fakelibvirt.VIR_DOMAIN_SHUTOFF
    fakelibvirt.Domain(hv.connections[0], U1, 'ca-' + U1, '').undefine()
    agent.wait_reported(U1, 'error')
    assert 'outside the agent' in agent.manager.requests.get_instance(U1)['fault']


def test_define_failure_leaves_nothing(agent, hv, conf):
    hv.fail_next['defineXML'] = fakelibvirt.libvirtError('XML error: bad', fakelibvirt.VIR_ERR_XML_ERROR)
    _, job = boot(agent)
    assert job['state'] == 'failed' and 'XML error: bad' in job['reason']
    assert hv.domains == {}
    assert not os.path.exists(os.path.join(conf.instances_path, U1))


def test_invalid_spec_is_refused_at_once_and_creates_nothing(agent, hv):
    before = len(hv.calls)
    with pytest.raises(exception.InvalidSpec, match='memory_mb'):
        agent.manager.requests.boot_instance(boot_spec(memory_mb=-5))
    with pytest.raises(exception.InvalidSpec, match='kernel'):
        agent.manager.requests.boot_instance(boot_spec(kernel='../../etc/passwd'))
    with pytest.raises(exception.InvalidSpec, match='bridge'):
        agent.manager.requests.boot_instance(boot_spec(nics=[{'type': 'bridge', 'bridge': 'nosuchbr'}]))
    assert len(hv.calls) == before
    assert agent.manager.requests.list_instances() == []
    assert agent.manager.jobs.by_state() == {}


def test_booting_an_existing_uuid_returns_the_same_job_and_one_domain(agent, hv):
    answer, _ = boot(agent)
    again = agent.manager.requests.boot_instance(boot_spec())
    assert again['job_id'] == answer['job_id'] and again['existing'] is True
    assert hv.calls.count('defineXML') == 1
    assert list(hv.domains) == [U1]


def test_delete_removes_domain_and_files_and_reports_deleted(agent, hv, conf):
    boot(agent)
    agent.wait_state(U1, 'active')
    job = agent.wait_job(agent.manager.requests.delete_instance(U1)['job_id'])
    assert job['state'] == 'done'
    assert hv.domains == {}
    assert job['libvirt_calls_by_op'] == {'destroy': 1, 'undefine': 1}
    assert not os.path.exists(os.path.join(conf.instances_path, U1))
    agent.wait_reported(U1, 'deleted')
    with pytest.raises(exception.InstanceNotFound):
        agent.manager.requests.get_instance(U1)


def test_delete_of_a_missing_instance_is_a_noop_that_records_nothing(agent, hv):
    before = len(hv.calls)
    jobs, puts = len(agent.manager.jobs.all()), agent.journal.puts
    for i in range(500):           # a flood of deletes of unknown uuids: no growing state
        answer = agent.manager.requests.delete_instance('%08x-2222-3333-4444-555555555555' % i)
        assert answer['job_id'] is None and answer['existing'] is False
    assert len(hv.calls) == before
    assert (len(agent.manager.jobs.all()), agent.journal.puts) == (jobs, puts)


def test_delete_during_boot_waits_for_the_boot_then_deletes(agent, hv):
    gate = hv.gates['createWithFlags'] = threading.Event()
    boot_job = agent.manager.requests.boot_instance(boot_spec())['job_id']
    del_job = agent.manager.requests.delete_instance(U1)['job_id']
    assert agent.manager.requests.get_job(del_job)['state'] == 'queued'
    gate.set()
    assert agent.wait_job(boot_job)['state'] == 'done'
    assert agent.wait_job(del_job)['state'] == 'done'
    assert hv.domains == {}
    agent.wait_reported(U1, 'deleted')


def test_parallel_boots_each_make_two_calls(agent, hv):
    uuids = [str(uuidlib.uuid4()) for _ in range(20)]
    before = len(hv.calls)
    jobs = [agent.manager.requests.boot_instance(boot_spec(u))['job_id'] for u in uuids]
    for j in jobs:
        assert agent.wait_job(j)['libvirt_calls'] == 2
    for u in uuids:
        agent.wait_state(u, 'active')
    assert len(hv.calls) - before == 40
    stats = agent.runtime.workqueue.stats()
    assert stats['libvirt.defineXML']['calls'] == 20 and stats['libvirt.createWithFlags']['calls'] == 20


def test_reconnects_after_libvirtd_restart_and_keeps_receiving_events(agent, hv):
    boot(agent)
    agent.wait_state(U1, 'active')
    opens = hv.calls.count('open')
    hv.restart()
    wait_until(lambda: hv.calls.count('open') > opens and len(hv.connections) == 1,
               what='reconnect')
    wait_until(lambda: len(hv.connections[0].lifecycle_callbacks) == 1, what='events re-registered')
    hv.guest_poweroff(U1)
    agent.wait_reported(U1, 'stopped')


def test_the_close_of_an_old_connection_does_not_break_the_new_one(agent, hv):
    # The Host reconnects by itself; a close callback of the connection it replaced (late,
    # or fired twice) must not take the new one down.
    boot(agent)
    agent.wait_state(U1, 'active')
    old = hv.connections[0]
    hv.restart()
    wait_until(lambda: len(hv.connections) == 1 and hv.connections[0] is not old
               and not agent.manager.recovering, what='reconnect and resync')
    opens = hv.calls.count('open')
    cb, epoch = old.close_callback
    cb(old, fakelibvirt.VIR_CONNECT_CLOSE_REASON_EOF, epoch)
    time.sleep(0.3)
    assert agent.driver.is_connected() and hv.calls.count('open') == opens
    hv.guest_poweroff(U1)
    agent.wait_reported(U1, 'stopped')


def test_state_missed_while_disconnected_is_resynced(agent, hv):
    boot(agent)
    agent.wait_state(U1, 'active')
    hv.restart(stay_down=True)
    wait_until(lambda: hv.calls.count('open') >= 3, what='reconnect attempts while down')
    hv.domains[U1].run_state = fakelibvirt.VIR_DOMAIN_SHUTOFF   # no connection: no event
    hv.down = False
    agent.wait_reported(U1, 'stopped')
    assert hv.calls.count('getAllDomainStats') == 2   # start-up + one resync
    assert hv.calls.count('XMLDesc') == 0             # known instances: no XML re-read


def test_restarted_agent_adopts_its_domains_and_ignores_others(conf, hv):
    first = Agent(conf, hv)
    boot(first)
    first.wait_state(U1, 'active')
    first.stop()
    foreign = '99999999-2222-3333-4444-555555555555'
    hv.domains[foreign] = fakelibvirt.Domain(None, foreign, 'someone-else', '<domain/>')
    second = Agent(conf, hv)
    try:
        assert second.manager.requests.get_instance(U1)['vm_state'] == 'active'
        with pytest.raises(exception.InstanceNotFound):
            second.manager.requests.get_instance(foreign)
        job = second.wait_job(second.manager.requests.delete_instance(U1)['job_id'])
        assert job['state'] == 'done' and list(hv.domains) == [foreign]
    finally:
        second.stop()


def test_virt_type_not_offered_refuses_to_start(conf, hv, monkeypatch):
    monkeypatch.setattr(fakelibvirt, 'CAPABILITIES', fakelibvirt.CAPABILITIES.replace(
        "<domain type='kvm'/>", ''))
    conf.set_override('virt_type', 'kvm', group='libvirt')
    with pytest.raises(exception.ConfigError, match='virt_type=kvm'):
        Agent(conf, hv)


def test_a_domain_left_by_a_failed_boot_is_removed_at_the_next_resync(agent, hv):
    """create and then undefine fail (the connection went): the job fails, the domain stays
    defined. After the reconnect the resync removes it; the instance stays in error."""
    hv.fail_next['createWithFlags'] = fakelibvirt.libvirtError('Cannot recv data: Connection reset')
    hv.fail_next['undefine'] = fakelibvirt.libvirtError('client socket is closed')
    job = agent.wait_job(agent.manager.requests.boot_instance(boot_spec())['job_id'])
    assert job['state'] == 'failed' and U1 in hv.domains
    hv.restart()
    wait_until(lambda: U1 not in hv.domains, what='the remnant to be removed')
    assert agent.manager.requests.get_instance(U1)['vm_state'] == 'error'
    assert agent.manager.tracker.claim_of(U1) is None


def test_a_boot_that_ends_while_the_reconnect_lists_is_not_called_lost(agent, hv):
    """The reconnect's listing is read before a boot defines its domain and handed back
    after the boot ended: that instance is newer than the listing and stays active."""
    listed = hv.late_gates['getAllDomainStats'] = threading.Event()
    listings = hv.calls.count('getAllDomainStats')
    try:
        hv.restart()
        wait_until(lambda: hv.calls.count('getAllDomainStats') > listings,
                   what='the reconnect listing')
        job = agent.wait_job(agent.manager.requests.boot_instance(boot_spec())['job_id'])
        assert job['state'] == 'done', job['reason']
        agent.wait_state(U1, 'active')
    finally:
        listed.set()
    wait_until(lambda: not agent.manager.recovering, what='the resync to end')
    agent.reporter.flush(10)
    assert agent.manager.requests.get_instance(U1)['vm_state'] == 'active'
    assert agent.manager.requests.get_instance(U1)['fault'] is None


def test_a_boot_whose_answer_was_lost_with_libvirtd_is_settled_after_the_reconnect(agent, hv):
    """libvirtd dies while create is in flight: the domain started, the answer never came.
    The boot waits for the reconnect, finds the domain running, and ends done."""
    gate = hv.gates['createWithFlags'] = threading.Event()
    answer = agent.manager.requests.boot_instance(boot_spec())
    wait_until(lambda: 'createWithFlags' in hv.calls, what='create to be in flight')
    hv.restart()                 # connections close; the close event starts the reconnect
    gate.set()
    job = agent.wait_job(answer['job_id'])
    assert job['state'] == 'done', job['reason']
    agent.wait_state(U1, 'active')
    assert hv.domains[U1].run_state == fakelibvirt.VIR_DOMAIN_RUNNING
    assert agent.manager.tracker.claim_of(U1) is not None


def test_a_boot_cut_off_before_start_is_cleaned_after_the_reconnect(agent, hv):
    gate = hv.gates['defineXML'] = threading.Event()
    answer = agent.manager.requests.boot_instance(boot_spec(disk_gb=1))
    wait_until(lambda: 'defineXML' in hv.calls, what='defineXML to be in flight')
    hv.restart()
    gate.set()                   # the define fails: its connection is gone
    job = agent.wait_job(answer['job_id'])
    assert job['state'] == 'failed' and job['reason']
    assert U1 not in hv.domains and agent.lvm.lvs == {}
    assert agent.manager.tracker.claim_of(U1) is None


def test_a_delete_that_arrives_while_the_boot_is_journaled_runs_after_the_boot(agent, hv):
    """The boot's job is held at the journal commit; a delete accepted meanwhile must not
    run first (or the boot would create the VM after it was deleted)."""
    gate = threading.Event()
    real = agent.journal._execute

    def held(op, fn, *args):
        gate.wait(10)
        return real(op, fn, *args)
    agent.journal._execute = held
    booted = []
    t = threading.Thread(target=lambda: booted.append(agent.manager.requests.boot_instance(boot_spec())))
    t.start()
    wait_until(lambda: U1 in agent.manager.instances, what='the boot to be recorded')
    deleted = []
    d = threading.Thread(target=lambda: deleted.append(agent.manager.requests.delete_instance(U1)))
    d.start()
    gate.set()
    t.join(10)
    d.join(10)
    agent.journal._execute = real
    assert agent.wait_job(booted[0]['job_id'])['state'] == 'done'
    assert agent.wait_job(deleted[0]['job_id'])['state'] == 'done'
    assert hv.domains == {} and U1 not in agent.manager.instances


def test_a_domain_gone_between_the_listing_and_its_xml_is_skipped(conf, hv):
    """Another node's domain (our name prefix) is removed while this agent starts: its
    listing saw it, its XMLDesc finds nothing. The start-up goes on without it."""
    from agent.virt.libvirt import config as vconfig
    other = '99999999-2222-3333-4444-555555555555'
    xml = vconfig.GuestConfig(uuid=other, name='theirs', virt_type='qemu', arch='x86_64',
                              vcpus=1, memory_mb=64, console_log='/dev/null', kernel='/k',
                              metadata=(('host', 'node2'),)).to_xml()
    hv.domains[other] = fakelibvirt.Domain(None, other, vconfig.domain_name(other), xml)
    listed = hv.late_gates['getAllDomainStats'] = threading.Event()
    started = []
    starter = threading.Thread(target=lambda: started.append(Agent(conf, hv)))
    starter.start()
    wait_until(lambda: 'getAllDomainStats' in hv.calls, what='listed')
    del hv.domains[other]              # the other node's teardown removes it
    listed.set()
    starter.join(10)
    assert started, 'the agent did not start'
    a = started[0]
    try:
        assert a.manager.requests.list_instances() == []
    finally:
        a.stop()


def test_domains_another_node_made_are_not_adopted(conf, hv):
    from agent.virt.libvirt import config as vconfig
    other = '99999999-2222-3333-4444-555555555555'
    xml = vconfig.GuestConfig(uuid=other, name='theirs', virt_type='qemu', arch='x86_64',
                              vcpus=1, memory_mb=64, console_log='/dev/null', kernel='/k',
                              metadata=(('host', 'node2'),)).to_xml()
    hv.domains[other] = fakelibvirt.Domain(None, other, vconfig.domain_name(other), xml)
    a = Agent(conf, hv)
    try:
        with pytest.raises(exception.InstanceNotFound):
            a.manager.requests.get_instance(other)
        assert other in hv.domains and a.manager.tracker.snapshot()['usage']['vcpus'] == 0
    finally:
        a.stop()
