"""Trust, over the stateful fakes: the agent touches only what it made, a stale delete acts on
nothing newer, journal outcomes are told as they are, storage runs only named operations."""
import os
import re
import sqlite3
import threading

import pytest

from agent import exception
from agent import journal as journalmod
from agent.storage import cmdworker
from agent.storage import operations
from agent.virt.libvirt import config as vconfig
from tests.unit import fakelibvirt
from tests.unit.conftest import Agent, boot_spec, wait_until

X = '99999999-2222-3333-4444-555555555555'
U1 = '11111111-2222-3333-4444-555555555555'


def foreign_domain(hv, uuid=X, name='someone-elses-vm', metadata=()):
    """A running domain another tool (or another node's agent) made, on the same libvirtd."""
    conn = fakelibvirt.open('fake:///other-tool')
    xml = vconfig.GuestConfig(uuid=uuid, name=name, virt_type='qemu', arch='x86_64', vcpus=1,
                              memory_mb=64, console_log='/dev/null', kernel='/k',
                              metadata=metadata).to_xml()
    if not metadata:      # no agent metadata at all, and its own name
        xml = xml.replace('<name>ca-%s</name>' % uuid, '<name>%s</name>' % name)
        xml = xml.split('<metadata>')[0] + xml.split('</metadata>')[1]
    dom = conn.defineXML(xml)
    dom.create()
    return dom


def alive(hv, uuid):
    dom = hv.domains.get(uuid)
    return dom is not None and dom.run_state == fakelibvirt.VIR_DOMAIN_RUNNING


# -- hole 2: a delete destroyed domains the agent does not own --------------------------------
def test_a_foreign_uuid_is_refused_and_a_delete_leaves_the_foreign_domain(conf, hv):
    foreign_domain(hv)
    agent = Agent(conf, hv)        # sees it in its start-up listing
    try:
        calls = len(hv.calls)
        with pytest.raises(exception.UuidTaken, match='someone-elses-vm'):
            agent.manager.requests.boot_instance(boot_spec(X))
        assert hv.calls[calls:] == []                    # refused with no libvirt call
        assert X not in agent.manager.instances and agent.manager.jobs.all() == []
        agent.manager.requests.delete_instance(X)
        assert alive(hv, X)
    finally:
        agent.stop()


def known_foreign(driver, uuid) -> bool:
    """Whether the driver refuses ``uuid`` as a domain that is not its own (no call)."""
    try:
        driver.check_uuid_free(uuid)
    except exception.UuidTaken:
        return True
    return False


def test_a_foreign_domain_defined_after_start_up_is_known_from_its_event(agent, hv):
    foreign_domain(hv)
    wait_until(lambda: known_foreign(agent.driver, X), what='the DEFINED event')
    with pytest.raises(exception.UuidTaken):
        agent.manager.requests.boot_instance(boot_spec(X))
    assert alive(hv, X)


def test_a_boot_that_libvirt_refuses_then_a_delete_leave_the_foreign_domain(agent, hv):
    fakelibvirt.hold_events()          # the agent has not heard of the foreign domain yet
    foreign_domain(hv)
    answer = agent.manager.requests.boot_instance(boot_spec(X))
    job = agent.wait_job(answer['job_id'])
    fakelibvirt.release_events()
    assert job['state'] == 'failed' and 'already defined with uuid' in job['reason']
    assert agent.manager.requests.get_instance(X)['vm_state'] == 'error'
    delete = agent.manager.requests.delete_instance(X)
    assert agent.wait_job(delete['job_id'])['state'] == 'done'
    assert alive(hv, X), 'the delete destroyed a domain the agent does not own'
    assert X not in agent.manager.instances


def test_another_nodes_domain_with_our_name_is_never_touched(agent, hv):
    # Same name and metadata layout, but its metadata names another node.
    foreign_domain(hv, metadata=(('host', 'node2'),), name='web')
    wait_until(lambda: known_foreign(agent.driver, X), what='the DEFINED event')
    with pytest.raises(exception.UuidTaken):
        agent.manager.requests.boot_instance(boot_spec(X))
    assert 'node2' in hv.domains[X].xml
    agent.manager.requests.delete_instance(X)
    assert alive(hv, X)


def test_a_same_named_domain_defined_in_the_blind_spot_is_not_undefined(agent, hv):
    # Defined just before our define, its event not yet delivered: libvirt updates it, and
    # its start fails "already running". The agent must not undefine what it did not make.
    fakelibvirt.hold_events()
    foreign_domain(hv, metadata=(('host', 'node2'),), name='web')
    answer = agent.manager.requests.boot_instance(boot_spec(X))
    job = agent.wait_job(answer['job_id'])
    fakelibvirt.release_events()
    assert job['state'] == 'failed' and 'taken by a domain this agent does not own' in \
        job['reason']
    agent.wait_job(agent.manager.requests.delete_instance(X)['job_id'])
    assert alive(hv, X)


# -- hole 3: a stale delete destroyed a newer instance ----------------------------------------
def test_a_stale_delete_never_acts_on_a_later_boot_of_the_same_uuid(agent, hv):
    gate = hv.gates['createWithFlags'] = threading.Event()
    agent.manager.requests.boot_instance(boot_spec(U1))
    first = agent.manager.requests.delete_instance(U1)
    assert agent.manager.requests.get_instance(U1)['vm_state'] == 'deleting'    # marked at once
    second = agent.manager.requests.delete_instance(U1)
    assert second == {'job_id': first['job_id'], 'uuid': U1, 'existing': True}
    with pytest.raises(exception.InstanceBusy):
        agent.manager.requests.boot_instance(boot_spec(U1))
    gate.set()
    assert agent.wait_job(first['job_id'])['state'] == 'done'
    assert U1 not in hv.domains
    # The same uuid booted again is a new instance: no delete accepted before it touches it.
    again = agent.manager.requests.boot_instance(boot_spec(U1))
    assert agent.wait_job(again['job_id'])['state'] == 'done'
    agent.wait_state(U1, 'active')
    wait_until(lambda: all(j.state in ('done', 'failed') for j in agent.manager.jobs.all()),
               what='every job to finish')
    assert alive(hv, U1)
    assert agent.manager.requests.get_instance(U1)['vm_state'] == 'active'
    assert agent.manager.tracker.snapshot()['usage']['vcpus'] == 1


# -- hole 7: journal outcomes ------------------------------------------------------------------
def test_a_journal_write_that_times_out_is_answered_as_unknown_then_runs(agent, hv, monkeypatch):
    real_write = agent.journal._write
    stuck = threading.Event()

    def slow_write(*args):
        stuck.wait(10)           # an fsync that hangs: the row may land, or not
        return real_write(*args)
    monkeypatch.setattr(agent.journal, '_write', slow_write)
    real_wait = agent.journal.wait
    monkeypatch.setattr(agent.journal, 'wait', lambda ticket, timeout=30: real_wait(ticket, 0.2))
    with pytest.raises(exception.AcceptanceUnknown, match='repeat the request') as err:
        agent.manager.requests.boot_instance(boot_spec(U1))
    monkeypatch.setattr(agent.journal, 'wait', real_wait)
    job_id = re.search(r'job ([0-9a-f-]{36}) for', err.value.args[0]).group(1)
    # Asked again meanwhile: the truth, the same job (no second VM).
    assert agent.manager.requests.boot_instance(boot_spec(U1))['job_id'] == job_id
    stuck.set()                  # the row lands after all: the boot runs
    assert agent.wait_job(job_id)['state'] == 'done'
    agent.wait_state(U1, 'active')
    assert list(hv.domains) == [U1]


def test_a_journal_write_that_never_started_is_refused_and_leaves_nothing(agent, hv,
                                                                          monkeypatch):
    blocker = threading.Event()
    real_write = agent.journal._write
    monkeypatch.setattr(agent.journal, '_write', lambda *a: (blocker.wait(10), real_write(*a)))
    agent.journal.put({'id': 'x', 'kind': 'boot', 'uuid': X, 'state': 'done',
                       'created_at': 1.0})                   # the commit that hangs
    wait_until(lambda: agent.journal._writing, what='a commit under way')
    real_wait = agent.journal.wait
    monkeypatch.setattr(agent.journal, 'wait', lambda ticket, timeout=30: real_wait(ticket, 0.2))
    with pytest.raises(exception.JournalUnavailable):
        agent.manager.requests.boot_instance(boot_spec(U1))           # its row only pending: withdrawn
    monkeypatch.setattr(agent.journal, 'wait', real_wait)
    blocker.set()
    agent.journal.flush(10)
    assert U1 not in agent.manager.instances
    assert [r['uuid'] for r in agent.journal.load()] == [X]
    assert agent.manager.tracker.snapshot()['usage']['vcpus'] == 0


def test_disk_full_says_disk_full_releases_the_reserve_and_deletes_still_work(tmp_path):
    j = journalmod.JobJournal(str(tmp_path / 'jobs.sqlite'), lambda op, fn, *a: fn(*a),
                              sleep=lambda s: None, reserve_bytes=1 << 20)
    assert os.path.getsize(j.reserve_path) == 1 << 20
    thread = threading.Thread(target=j.run, daemon=True)
    thread.start()
    j.put({'id': 'a', 'kind': 'boot', 'uuid': X, 'state': 'queued', 'created_at': 1.0})
    j.flush(5)
    # The filesystem fills up: SQLite's own SQLITE_FULL. Space comes back when the reserve
    # is released (as a real filesystem would give it).
    pages = j._db.execute('PRAGMA page_count').fetchone()[0]
    j._db.execute('PRAGMA max_page_count = %d' % pages)
    real_release = j._release_reserve

    def release():
        freed = real_release()
        j._db.execute('PRAGMA max_page_count = 1000000')
        return freed
    j._release_reserve = release
    j.put({'id': 'd', 'kind': 'delete', 'uuid': X, 'state': 'queued', 'created_at': 2.0,
           'spec': {'big': 'x' * 200000}})
    j.flush(5)                                  # the delete is recorded all the same
    assert {r['id'] for r in j.load()} == {'a', 'd'}
    assert j.reserve_released == 1
    # This test's filesystem has room again: the reserve is back and boots are accepted.
    assert not j.low_space and os.path.getsize(j.reserve_path) == 1 << 20
    j.stop()


def test_a_failed_commit_reports_its_own_error_not_the_rollback_s(tmp_path):
    j = journalmod.JobJournal(str(tmp_path / 'jobs.sqlite'), lambda op, fn, *a: fn(*a),
                              reserve_bytes=0)
    j._db.execute('PRAGMA max_page_count = %d' % j._db.execute('PRAGMA page_count').fetchone()[0])
    with pytest.raises(sqlite3.OperationalError) as err:
        j._write([{'id': 'a', 'kind': 'boot', 'uuid': X, 'state': 'queued', 'created_at': 1.0,
                   'spec': {'big': 'x' * 200000}}], None)
    assert journalmod.describe(err.value).startswith('disk full')
    assert not j._db.in_transaction


def test_boots_are_refused_while_the_journal_runs_on_its_reserve(agent, monkeypatch):
    # The reserve was given up for a commit and the filesystem has no room to remake it.
    os.unlink(agent.journal.reserve_path)
    agent.journal.low_space = True
    monkeypatch.setattr(agent.journal, '_make_reserve', lambda: False)
    with pytest.raises(exception.InsufficientResources, match='out of disk space'):
        agent.manager.requests.boot_instance(boot_spec(U1))
    assert U1 not in agent.manager.instances and agent.journal.load() == []
    # The operator makes room: the next boot remakes the reserve and is accepted, with no
    # journal commit needed first.
    monkeypatch.undo()
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(U1))['job_id'])
    assert not agent.journal.low_space and os.path.exists(agent.journal.reserve_path)


# -- the storage privilege boundary ------------------------------------------------------------
POLICY = operations.Policy(volume_group='vg0', image_dir='/var/lib/ca/images',
                           instances_path='/var/lib/ca/instances')


@pytest.mark.parametrize('op, args, why', [
    ('rm', {'argv': ['-rf', '/']}, 'unknown operation'),
    ({'argv': 'x'}, {}, 'unknown operation'),
    ('lv_remove', {'vg': 'vg0', 'uuid': '* || true'}, 'uuid'),
    ('lv_remove', {'vg': 'rootvg', 'uuid': U1}, 'vg'),
    ('lv_create', {'vg': 'vg0', 'uuid': U1, 'size': -1}, 'size'),
    ('lv_create', {'vg': 'vg0', 'uuid': U1, 'size': '1g; reboot'}, 'size'),
    ('image_to_lv', {'vg': 'vg0', 'uuid': U1, 'image': '/etc/shadow', 'format': 'raw'}, 'image'),
    ('image_to_lv', {'vg': 'vg0', 'uuid': U1, 'image': '/var/lib/ca/images/../../../etc/shadow',
                     'format': 'raw'}, 'image'),
    ('image_to_lv', {'vg': 'vg0', 'uuid': U1, 'image': '/var/lib/ca/images/a', 'format': 'vmdk'},
     'format'),
    ('qcow2_create', {'uuid': U1, 'size': 1, 'image': '/var/lib/ca/images/a', 'format': None},
     'format'),
    ('lvs', 'vg0', 'object'),
    ('lv_zero', {'vg': 'vg0', 'lv': 'root'}, 'lv'),                 # not an LV the agent names
    ('lv_zero', {'vg': 'vg0', 'lv': '../../sda'}, 'lv'),
    ('lv_zero', {'vg': 'rootvg', 'lv': 'ca-%s-root' % U1}, 'vg'),
])
def test_the_command_worker_runs_only_named_operations_it_checks_itself(op, args, why):
    answer = cmdworker.run_one(None, {'op': op, 'args': args}, POLICY, {}, 1.0)
    assert answer['rc'] == 125 and why in answer['stderr']


def test_the_command_worker_builds_explicit_commands():
    build = operations.build
    assert build('image_to_lv', {'vg': 'vg0', 'uuid': U1, 'format': 'qcow2',
                                 'image': '/var/lib/ca/images/a.qcow2'}, POLICY) == [
        'qemu-img', 'convert', '-n', '-f', 'qcow2', '-O', 'raw', '/var/lib/ca/images/a.qcow2',
        '/dev/vg0/ca-%s-root' % U1]
    assert build('qcow2_create', {'uuid': U1, 'size': 1 << 30, 'image': None}, POLICY) == [
        'qemu-img', 'create', '-q', '-f', 'qcow2', '/var/lib/ca/instances/%s/disk.qcow2' % U1,
        str(1 << 30)]
    assert build('lv_remove', {'vg': 'vg0', 'uuid': U1}, POLICY)[-3:] == [
        '--select', 'lv_tags=ca-instance-%s' % U1, 'vg0']
    assert build('lv_zero', {'vg': 'vg0', 'lv': 'ca-%s-root' % U1}, POLICY) == [
        'blkdiscard', '--zeroout', '/dev/vg0/ca-%s-root' % U1]


def test_a_storage_command_that_times_out_fails_the_boot_naming_it(conf, hv):
    agent = Agent(conf, hv)
    try:
        agent.lvm.fail['lvcreate'] = (124, 'lvcreate timed out after 600 s and was killed')
        answer = agent.manager.requests.boot_instance(boot_spec(U1, disk_gb=1))
        job = agent.wait_job(answer['job_id'])
        assert job['state'] == 'failed'
        assert job['reason'].startswith('storage: lvcreate failed (exit 124): lvcreate timed out')
        assert hv.domains == {} and agent.lvm.lvs == {}
    finally:
        agent.stop()
