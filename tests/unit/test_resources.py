"""Resource accounting: claims, refusals, generations, audits and reports (fake libvirt/LVM)."""
import threading
import uuid as uuidlib

import pytest

from agent import exception
from agent import resources
from agent.conductor import db
from tests.unit import fakelibvirt
from tests.unit.conftest import Agent, boot_spec, wait_until

U1 = '11111111-2222-3333-4444-555555555555'
ZERO = {'vcpus': 0, 'memory_mb': 0, 'disk_gb': 0}


class Notes:
    def __init__(self):
        self.reports = []

    def __call__(self, report):
        self.reports.append(report)


def tracker(cpus=4, memory_mb=4096, disk_gb=100, **alloc):
    notes = Notes()
    t = resources.ResourceTracker('node1', resources.Allocation(**alloc), notes)
    t.set_inventory(cpus=cpus, memory_mb=memory_mb, disk_gb=disk_gb)
    return t, notes


def test_capacity_applies_ratios_and_reservations():
    t, notes = tracker(cpus=4, memory_mb=4096, disk_gb=100, cpu_ratio=2.0, ram_ratio=1.5,
                       reserved_cpus=1, reserved_memory_mb=1024, reserved_disk_gb=10)
    assert t.snapshot()['capacity'] == {'vcpus': 6, 'memory_mb': 4608, 'disk_gb': 90}
    assert notes.reports[-1]['inventory'] == {'cpus': 4, 'memory_mb': 4096, 'disk_gb': 100}


def test_a_claim_instead_of_a_reservation_takes_its_place_in_one_step():
    t, notes = tracker(disk_gb=10)
    t.reserve('spare', 4)
    t.claim('other', 1, 128, 6)                    # the spare holds all that is left
    with pytest.raises(exception.InsufficientResources, match='disk_gb: 4 requested, 0 of'):
        t.claim(U1, 1, 128, 4)
    with pytest.raises(exception.InsufficientResources, match='memory_mb'):
        t.claim(U1, 1, 10 ** 5, 4, instead_of='spare')
    assert t.claim_of('spare') == resources.Amounts(0, 0, 4)      # a refusal moves nothing
    reports = len(notes.reports)
    t.claim(U1, 1, 128, 4, instead_of='spare')
    assert t.claim_of('spare') is None and t.claim_of(U1) == resources.Amounts(1, 128, 4)
    snap = t.snapshot()
    assert snap['usage'] == {'vcpus': 2, 'memory_mb': 256, 'disk_gb': 10}
    assert snap['reserved'] == ZERO and snap['instances'] == 2
    assert len(notes.reports) == reports + 1                       # one change, one report


@pytest.mark.parametrize('vcpus, memory_mb, disk_gb, match', [
    (0, 128, 0, 'vcpus: must be an integer >= 1, got 0'),
    (-1, 128, 0, 'vcpus: must be an integer >= 1, got -1'),
    (1, 0, 0, 'memory_mb: must be an integer >= 1, got 0'),
    (1, -128, 0, 'memory_mb: must be an integer >= 1'),
    (1, 128, -1, 'disk_gb: must be an integer >= 0, got -1'),
    (True, 128, 0, 'vcpus: must be an integer'),
    (1, 1.5, 0, 'memory_mb: must be an integer'),
    (1, '128', 0, 'memory_mb: must be an integer'),
    (65, 128, 0, r'vcpus: 65 requested, more than this node offers instances in all \(64\)'),
    (1, 10 ** 9, 0, 'memory_mb: 1000000000 requested, more than this node offers'),
    (1, 128, 101, r'disk_gb: 101 requested, more than this node offers instances in all \(100\)'),
])
def test_bad_claims_get_a_clear_error_and_change_nothing(vcpus, memory_mb, disk_gb, match):
    t, notes = tracker()
    t.claim('other', 1, 128, 1)
    before, reports = t.snapshot(), len(notes.reports)
    with pytest.raises(exception.InvalidSpec, match=match):
        t.claim(U1, vcpus, memory_mb, disk_gb)
    assert t.snapshot() == before and len(notes.reports) == reports
    assert t.claim_of(U1) is None


def test_a_second_claim_for_the_same_uuid_is_refused_and_changes_nothing():
    t, notes = tracker()
    t.claim(U1, 1, 128, 1)
    before = t.snapshot()
    with pytest.raises(exception.ClaimExists, match='already holds a resource claim'):
        t.claim(U1, 1, 128, 1)
    assert t.snapshot() == before and t.counts['refusals'] == 1


def test_claims_that_do_not_fit_name_the_resource_and_releases_free_it():
    t, _ = tracker(cpus=2, cpu_ratio=1.0)
    t.claim('a', 2, 128)
    with pytest.raises(exception.InsufficientResources, match='vcpus: 1 requested, 0 of 2 free'):
        t.claim('b', 1, 128)
    assert t.release('a') and not t.release('a')
    t.claim('b', 1, 128)
    assert t.snapshot()['usage'] == {'vcpus': 1, 'memory_mb': 128, 'disk_gb': 0}


def test_every_change_has_a_higher_generation_and_no_ops_send_nothing():
    t, notes = tracker()
    t.set_inventory(cpus=4)                          # same inventory: nothing new
    assert len(notes.reports) == 1 and t.counts['reports_skipped_noop'] == 1
    t.claim('a', 1, 128)
    t.claim('b', 1, 128)
    t.release('a')
    gens = [r['generation'] for r in notes.reports]
    assert len(gens) == 4 and gens == sorted(set(gens))
    assert notes.reports[-1]['usage'] == {'vcpus': 1, 'memory_mb': 128, 'disk_gb': 0}
    assert notes.reports[-1]['instances'] == 1


def test_a_restarted_tracker_starts_above_the_old_generations():
    t1, n1 = tracker()
    for i in range(60):
        t1.claim('u%d' % i, 1, 1)
    t2, n2 = tracker()
    assert n2.reports[0]['generation'] > n1.reports[-1]['generation']


def test_audit_corrects_only_what_differs_and_leaves_claims_made_meanwhile():
    t, notes = tracker()
    t.claim('kept', 1, 128, 1)
    t.claim('leaked', 1, 128, 1)
    t.claim('working', 1, 128, 0)
    with t.auditing(busy={'working'}) as token:
        t.claim('new', 1, 128, 1)            # after the listings were read: not in them
        observed = {'kept': resources.Amounts(1, 128, 1),
                    'adopted': resources.Amounts(2, 256, 0)}
        assert sorted(t.apply_audit(token, observed, busy=set())) == ['adopted', 'leaked']
    assert t.claim_of('new') == resources.Amounts(1, 128, 1)
    assert t.claim_of('working') == resources.Amounts(1, 128, 0)   # busy when it began
    assert t.claim_of('leaked') is None
    assert t.snapshot()['usage'] == {'vcpus': 5, 'memory_mb': 640, 'disk_gb': 2}
    reports = len(notes.reports)
    with t.auditing() as token:
        observed['new'] = resources.Amounts(1, 128, 1)
        observed['working'] = resources.Amounts(1, 128, 0)
        assert t.apply_audit(token, observed, busy=set()) == []
    assert len(notes.reports) == reports            # nothing differed: nothing sent


def test_an_audit_whose_listing_failed_leaves_no_token_behind():
    t, _ = tracker()
    with pytest.raises(exception.HypervisorUnavailable):
        with t.auditing():
            raise exception.HypervisorUnavailable(reason='listing failed')
    # Had the failed audit's token stayed, every later claim would be recorded in it for ever.
    assert t._audits == []


# -- through the manager, over the fake libvirt and fake LVM -----------------------------------

def test_boot_claims_before_any_libvirt_or_lvm_work_and_delete_releases(agent, hv):
    calls, launches = len(hv.calls), len(agent.lvm.launches)
    gate = hv.gates['defineXML'] = threading.Event()
    answer = agent.manager.requests.boot_instance(boot_spec(disk_gb=2, vcpus=2, memory_mb=256))
    assert agent.manager.tracker.claim_of(U1) == resources.Amounts(2, 256, 2)
    gate.set()
    assert agent.wait_job(answer['job_id'])['state'] == 'done'
    assert hv.calls[calls:] == ['defineXML', 'createWithFlags']
    assert agent.lvm.launches[launches:] == ['lvcreate']
    agent.wait_state(U1, 'active')
    assert agent.wait_job(agent.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
    assert agent.manager.tracker.snapshot()['usage'] == ZERO
    assert agent.manager.tracker.counts['releases'] == 1


def test_a_failed_boot_releases_its_claim(agent, hv):
    hv.fail_next['createWithFlags'] = fakelibvirt.libvirtError('no space for the guest')
    answer = agent.manager.requests.boot_instance(boot_spec(disk_gb=1))
    assert agent.wait_job(answer['job_id'])['state'] == 'failed'
    assert agent.manager.tracker.snapshot()['usage'] == ZERO
    assert agent.manager.requests.get_instance(U1)['vm_state'] == 'error'
    assert agent.manager.audits.audit() == []           # and the audit agrees: nothing is held


def test_an_over_capacity_boot_is_refused_with_nothing_created(conf, hv):
    a = Agent(conf, hv, allocation=resources.Allocation(cpu_ratio=1.0))   # fake host: 8 CPUs
    try:
        uuids = [str(uuidlib.uuid4()) for _ in range(4)]
        for u in uuids:
            a.wait_job(a.manager.requests.boot_instance(boot_spec(u, vcpus=2))['job_id'])
        calls = len(hv.calls)
        with pytest.raises(exception.InsufficientResources, match='vcpus: 1 requested, 0 of 8'):
            a.manager.requests.boot_instance(boot_spec(U1))
        assert len(hv.calls) == calls and U1 not in hv.domains
        with pytest.raises(exception.InstanceNotFound):
            a.manager.requests.get_instance(U1)
        for u in uuids:
            a.wait_job(a.manager.requests.delete_instance(u)['job_id'])
        assert a.manager.tracker.snapshot()['usage'] == ZERO and hv.domains == {}
        a.reporter.flush(10)
        assert a.reports.usage[-1]['usage'] == ZERO
    finally:
        a.stop()


def test_a_periodic_audit_with_no_change_sends_nothing(agent, hv):
    for i in range(3):
        agent.wait_job(agent.manager.requests.boot_instance(
            boot_spec(str(uuidlib.uuid4()), disk_gb=1))['job_id'])
    assert agent.reporter.flush(10)
    sent, batches = len(agent.reports.usage), len(agent.reports.batches)
    skipped = agent.manager.tracker.counts['reports_skipped_noop']
    for _ in range(3):
        assert agent.manager.audits.audit() == []
    assert agent.reporter.flush(10)
    assert len(agent.reports.usage) == sent and len(agent.reports.batches) == batches
    assert agent.reporter.reports_sent == agent.reporter.stats()['reports_sent']
    assert agent.manager.tracker.counts['reports_skipped_noop'] == skipped + 3
    assert agent.manager.tracker.counts['audits'] >= 4       # start-up + these 3


def test_the_audit_finds_a_domain_removed_behind_the_agents_back(agent, hv):
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(disk_gb=1, vcpus=2))['job_id'])
    agent.wait_state(U1, 'active')
    hv.domains.pop(U1)                            # gone without an event
    assert agent.manager.audits.audit() == [U1]
    # The LV is still there and still counts; the vCPUs and memory do not.
    assert agent.manager.tracker.claim_of(U1) == resources.Amounts(0, 0, 1)
    agent.reporter.flush(10)
    assert agent.reports.usage[-1]['usage'] == {'vcpus': 0, 'memory_mb': 0, 'disk_gb': 1}


def test_the_audit_leaves_a_boot_in_progress_alone(agent, hv):
    gate = agent.lvm.gates['lvcreate'] = threading.Event()
    answer = agent.manager.requests.boot_instance(boot_spec(disk_gb=1))
    wait_until(lambda: 'lvcreate' in agent.lvm.launches, what='lvcreate to start')
    try:
        assert agent.manager.audits.audit() == []        # no domain, no LV yet: still not "leaked"
        assert agent.manager.tracker.claim_of(U1) == resources.Amounts(1, 128, 1)
    finally:
        gate.set()
    assert agent.wait_job(answer['job_id'])['state'] == 'done'
    assert agent.manager.audits.audit() == []


def test_a_boot_that_ends_while_the_periodic_audit_lists_keeps_its_claim(agent, hv):
    """The audit's domain listing is read before the boot defines its domain and handed
    back only after the boot ended: the listing is older than the boot's end, so the
    boot (busy when the audit began) is not judged by it."""
    define = hv.gates['defineXML'] = threading.Event()
    answer = agent.manager.requests.boot_instance(boot_spec(disk_gb=1))
    wait_until(lambda: 'defineXML' in hv.calls, what='defineXML to be in flight')
    listed = hv.late_gates['getAllDomainStats'] = threading.Event()
    listings = hv.calls.count('getAllDomainStats')
    result = {}
    auditor = threading.Thread(
        target=lambda: result.update(corrected=agent.manager.audits.periodic_audit()))
    auditor.start()
    try:
        wait_until(lambda: hv.calls.count('getAllDomainStats') > listings,
                   what='the audit listing')
        define.set()
        assert agent.wait_job(answer['job_id'])['state'] == 'done'
    finally:
        define.set()
        listed.set()
        auditor.join(10)
    assert result['corrected'] == []
    assert agent.manager.tracker.claim_of(U1) == resources.Amounts(1, 128, 1)
    assert agent.manager.tracker.counts['audit_corrections'] == 0
    assert agent.manager.audits.audit() == []


def test_stopping_the_audit_loop_lets_the_audit_under_way_finish_and_begins_none(agent, hv):
    """The agent stops: the audit loop begins no audit, and ``stop`` returns only once the
    one under way has its listings (they need libvirt, which the agent closes next)."""
    listings = hv.calls.count('getAllDomainStats')          # start-up's
    listed = hv.gates['getAllDomainStats'] = threading.Event()
    loop = threading.Thread(target=agent.manager.audits.run, args=(0.001,), daemon=True)
    loop.start()
    wait_until(lambda: hv.calls.count('getAllDomainStats') > listings,
               what='a periodic audit listing')
    audits = agent.manager.tracker.counts['audits']
    stopped = {}
    stopper = threading.Thread(target=lambda: stopped.update(
        idle=agent.manager.audits.stop(timeout=10)))
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive() and not stopped   # waits for the audit under way
    listed.set()
    stopper.join(10)
    loop.join(10)
    assert stopped == {'idle': True} and not loop.is_alive()
    assert agent.manager.tracker.counts['audits'] == audits + 1     # that one, no other


def test_a_restarted_agent_rebuilds_usage_from_libvirt_and_lvm(conf, hv):
    first = Agent(conf, hv)
    lvm = first.lvm
    first.wait_job(first.manager.requests.boot_instance(
        boot_spec(disk_gb=2, vcpus=3, memory_mb=512))['job_id'])
    usage = first.manager.tracker.snapshot()['usage']
    first.stop()
    second = Agent(conf, hv, lvm=lvm)
    try:
        assert second.manager.tracker.snapshot()['usage'] == usage == {
            'vcpus': 3, 'memory_mb': 512, 'disk_gb': 2}
        assert second.manager.tracker.counts['audit_corrections'] == 1   # the adoption
        second.wait_job(second.manager.requests.delete_instance(U1)['job_id'])
        assert second.manager.tracker.snapshot()['usage'] == ZERO and lvm.lvs == {}
    finally:
        second.stop()


def test_claim_lock_is_held_for_microseconds_while_the_conductor_is_slow(conf, hv):
    """50 parallel boots while every report takes the conductor 0.5 s: all 50 are answered
    while the first report is still in flight, and no claim ever held the lock for as long as
    half a report (a lock held across the RPC would hold it >= 0.5 s)."""
    a = Agent(conf, hv)
    try:
        assert a.reporter.flush(10)
        a.reports.delay = 0.5
        sent_before = a.reporter.reports_sent
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(
            a.manager.requests.boot_instance(boot_spec(str(uuidlib.uuid4())))))
            for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(answers) == 50
        assert a.reporter.reports_sent - sent_before <= 1    # answered before 2 reports landed
        lock = a.manager.tracker.stats()['lock']
        assert lock['acquisitions'] >= 50
        # Wall-clock: a claim can wait for the GIL behind 49 native threads (tens of ms seen);
        # a lock held across the report's RPC would be held >= 0.5 s.
        assert lock['hold_max_us'] < 0.5 * 0.5e6, lock
        for ans in answers:
            a.wait_job(ans['job_id'])
        assert a.reporter.flush(20)
        assert a.reports.usage[-1]['usage'] == a.manager.tracker.snapshot()['usage'] == {
            'vcpus': 50, 'memory_mb': 50 * 128, 'disk_gb': 0}
        # 50 claims: a handful of reports, each generation above the one before.
        gens = [u['generation'] for u in a.reports.usage]
        assert gens == sorted(set(gens)) and len(gens) <= 10
    finally:
        a.reports.delay = 0
        a.stop()


def test_conductor_keeps_the_newest_usage_per_node(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))

    def usage(gen, vcpus):
        return {'generation': gen, 'capacity': {'vcpus': 8}, 'usage': {'vcpus': vcpus},
                'instances': vcpus, 'inventory': {'cpus': 8}, 'at': 1.0}
    store.apply_report('h1', [], usage(5, 2))
    store.apply_report('h1', [], usage(4, 7))            # late and older: ignored
    store.apply_report('h2', [], usage(1, 1))
    assert store.get_node('h1')['usage'] == {'vcpus': 2}
    assert store.get_node('h1')['generation'] == 5
    store.apply_report('h1', [], usage(6, 0))
    assert store.get_node('h1')['usage'] == {'vcpus': 0}
    assert [r['node_applied'] for r in store.list_reports('h1')] == [1, 0, 1]
    assert store.get_node('nope') is None
