"""The durable job journal (group commit, in-place updates, pruning) and restart reconciliation
over the fake libvirt and fake LVM."""
import os
import threading
import uuid as uuidlib

import pytest

from agent import exception
from agent import instancedir
from agent import journal as journalmod
from agent import reconcile
from agent import workqueue
from tests.unit import fakelibvirt
from tests.unit.conftest import Agent, boot_spec, wait_until

U1 = '11111111-2222-3333-4444-555555555555'
GiB = 1024 ** 3


class SlowExecute:
    """The work queue's execute, with each commit held until released."""

    def __init__(self):
        self.wq = workqueue.ThreadWorkQueue(2)
        self.gate = threading.Event()
        self.gate.set()
        self.commits = 0

    def __call__(self, op, fn, *args):
        self.gate.wait(10)
        self.commits += 1
        return self.wq.execute(op, fn, *args)


def start_journal(path, execute):
    j = journalmod.JobJournal(str(path), execute)
    threading.Thread(target=j.run, daemon=True).start()
    return j


def row(job_id, state='queued', **extra):
    return dict({'id': job_id, 'kind': 'boot', 'uuid': U1, 'state': state, 'reason': None,
                 'created_at': 1.0, 'started_at': None, 'finished_at': None, 'attempts': 1,
                 'calls': {}, 'spec': None}, **extra)


def test_changes_made_during_a_commit_are_grouped_into_the_next_one(tmp_path):
    ex = SlowExecute()
    j = start_journal(tmp_path / 'j.sqlite', ex)
    ex.gate.clear()
    first = j.put(row('a'))
    wait_until(lambda: j.stats()['pending'] == 0, what='the first commit to start')
    tickets = []
    threads = [threading.Thread(target=lambda i=i: tickets.append(j.put(row('job%d' % i))))
               for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ex.gate.set()
    for t in [first] + tickets:
        j.wait(t)
    assert ex.commits == 2          # 101 jobs, two transactions (two fsyncs), not 101
    assert len(j.load()) == 101
    j.stop()


def test_a_job_record_is_updated_in_place_not_rewritten(tmp_path):
    ex = SlowExecute()
    j = start_journal(tmp_path / 'j.sqlite', ex)
    j.wait(j.put(row('a', spec={'uuid': U1, 'vcpus': 1})))
    ex.gate.clear()
    for i in range(200):            # 200 changes while one commit is held
        j.put(row('a', state='running', attempts=1 + i % 3))
    j.put(row('a', state='failed', reason='it broke', finished_at=2.0))
    ex.gate.set()
    j.flush()
    rows = j.load()
    assert len(rows) == 1 and rows[0]['state'] == 'failed' and rows[0]['reason'] == 'it broke'
    assert rows[0]['spec'] == {'uuid': U1, 'vcpus': 1}        # written once, kept
    assert j.stats()['rows_written'] <= 3                      # not 202
    j.stop()


def test_a_commit_that_fails_fails_the_waiters_and_is_retried(tmp_path):
    calls = []

    def flaky(op, fn, *args):
        calls.append(op)
        if len(calls) == 1:
            raise OSError(28, 'No space left on device')
        return fn(*args)
    j = journalmod.JobJournal(str(tmp_path / 'j.sqlite'), flaky, sleep=lambda s: None)
    threading.Thread(target=j.run, daemon=True).start()
    ticket = j.put(row('a'))
    try:
        j.wait(ticket, timeout=5)
    except journalmod.JournalError as exc:
        assert 'No space left on device' in str(exc)
    wait_until(lambda: j.stats()['commits'] == 1, what='the retried commit')
    j.wait(ticket)
    assert [r['id'] for r in j.load()] == ['a']
    j.stop()


def test_finished_jobs_are_pruned_after_the_retention(conf, hv):
    a = Agent(conf, hv)
    try:
        answer = a.manager.requests.boot_instance(boot_spec())
        a.wait_job(answer['job_id'])
        gone = a.manager.requests.delete_instance(U1)['job_id']
        a.wait_job(gone)
        import time
        assert a.manager.jobs.prune(time.time() + 7200) == 2
        a.journal.flush()
        assert a.journal.load() == []
        with pytest.raises(exception.JobNotFound):
            a.manager.requests.get_job(answer['job_id'])
    finally:
        a.stop()


# -- restart reconciliation: the pure plan ----------------------------------------------------

def _job(kind, state, attempts=1, uuid=U1, created=1.0):
    from agent import jobs
    return jobs.Job(id=str(uuidlib.uuid4()), kind=kind, uuid=uuid, state=state,
                    attempts=attempts, created_at=created, spec={'uuid': uuid, 'disk_gb': 1})


class Info:
    def __init__(self, uuid, power='running'):
        self.uuid, self.power_state, self.name, self.sizes, self.ours = uuid, power, '', {}, True


@pytest.mark.parametrize('jobs, domain, running, action', [
    ([_job('boot', 'running')], True, True, reconcile.FINISH_BOOT),
    ([_job('boot', 'running')], True, False, reconcile.RESUME_BOOT),
    ([_job('boot', 'queued')], False, False, reconcile.RESUME_BOOT),
    ([_job('boot', 'running', attempts=2)], False, False, reconcile.FAIL_BOOT),
    ([_job('boot', 'done'), _job('delete', 'running', created=2.0)], True, True,
     reconcile.RESUME_DELETE),
    ([_job('boot', 'done')], True, True, reconcile.ADOPT),
    ([], True, True, reconcile.ADOPT),
    ([_job('boot', 'failed')], False, False, reconcile.RESTORE_ERROR),
    ([_job('boot', 'done')], False, False, reconcile.LOST),
    ([_job('boot', 'done'), _job('stop', 'running', created=2.0)], True, True,
     reconcile.RESUME_POWER),
    ([_job('boot', 'done'), _job('reboot', 'queued', created=2.0)], True, False,
     reconcile.RESUME_POWER),
    ([_job('boot', 'done'), _job('start', 'running', created=2.0)], False, False,
     reconcile.LOST),
    # An instance whose last job was a finished stop is still an instance.
    ([_job('boot', 'done'), _job('stop', 'done', created=2.0)], False, False, reconcile.LOST),
    ([_job('boot', 'done'), _job('stop', 'done', created=2.0)], True, False, reconcile.ADOPT),
    ([_job('boot', 'done'), _job('delete', 'done', created=2.0)], False, False, None),
])
def test_the_plan_follows_the_documented_rules(jobs, domain, running, action):
    domains = {U1: Info(U1, 'running' if running else 'shutdown')} if domain else {}
    plan = reconcile.plan(jobs, domains, {}, {}, {U1} if running else set())
    assert [s.action for s in plan.steps] == ([action] if action else [])


def test_a_journal_from_before_job_results_gains_the_column_and_keeps_its_rows(tmp_path):
    import sqlite3
    path = str(tmp_path / 'old.sqlite')
    db = sqlite3.connect(path)
    db.executescript("""CREATE TABLE jobs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, uuid TEXT NOT NULL, state TEXT NOT NULL,
        reason TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
        attempts INTEGER NOT NULL DEFAULT 1, calls TEXT, spec TEXT);
        INSERT INTO jobs VALUES ('j1', 'boot', '%s', 'done', NULL, 1.0, 1.0, 2.0, 1, '{}', NULL);
        """ % U1)
    db.close()
    wq = workqueue.ThreadWorkQueue(1)
    j = start_journal(path, wq.execute)
    try:
        assert [(r['id'], r['state'], r['result']) for r in j.load()] == [('j1', 'done', None)]
        j.wait(j.put(row('j2', 'done', result='graceful')))
        assert {r['id']: r['result'] for r in j.load()} == {'j1': None, 'j2': 'graceful'}
    finally:
        j.stop()
        wq.shutdown()


def test_the_plan_removes_only_disks_and_dirs_no_instance_holds():
    other = str(uuidlib.uuid4())
    done_then_deleted = [_job('boot', 'done', uuid=other),
                         _job('delete', 'done', uuid=other, created=2.0)]
    plan = reconcile.plan(done_then_deleted + [_job('boot', 'done')], {U1: Info(U1)},
                          {U1: 'lv', other: 'lv', 'x' * 36: 'lv'}, {U1: 'd', other: 'd'}, {U1})
    assert plan.orphan_disks == sorted([other, 'x' * 36])
    assert plan.orphan_dirs == [other]


# -- restart reconciliation: through the manager ----------------------------------------------

def _interrupted(conf, hv, gate_op, **spec):
    """Agent A accepts a boot that is held at ``gate_op`` and then dies without a clean stop."""
    a = Agent(conf, hv)
    gate = (hv.gates if gate_op in ('defineXML', 'createWithFlags') else a.lvm.gates)[gate_op] = \
        threading.Event()
    answer = a.manager.requests.boot_instance(boot_spec(**spec))
    calls = hv.calls if gate_op in ('defineXML', 'createWithFlags') else a.lvm.launches
    wait_until(lambda: gate_op in calls, what='the boot to reach %s' % gate_op)
    a.journal.flush()
    a.crash()
    return a, gate, answer['job_id']


def test_a_boot_interrupted_before_start_is_cleaned_and_run_again(conf, hv):
    a, gate, job_id = _interrupted(conf, hv, 'createWithFlags', disk_gb=1)
    assert U1 in hv.domains and 'ca-%s-root' % U1 in a.lvm.lvs     # half made
    hv.gates.clear()
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        job = b.wait_job(job_id)
        assert job["state"] == "done" and job["attempts"] == 2, job["reason"]
        b.wait_state(U1, 'active')
        assert b.manager.reconciled['resume_boot'] == 1
        assert b.manager.tracker.claim_of(U1) is not None
        assert list(a.lvm.lvs) == ['ca-%s-root' % U1]
    finally:
        gate.set()
        b.stop()


def test_a_restart_serves_while_an_interrupted_boots_disk_is_removed(conf, hv):
    """What an interrupted boot made is removed after start-up, not in it (its disk is
    zeroed first: seconds on a node; twenty kept a restarted agent from answering for a
    minute). The instance is held meanwhile: a delete sent then waits for the boot run
    again, and then removes it."""
    a, gate, job_id = _interrupted(conf, hv, 'createWithFlags', disk_gb=1)
    hv.gates.clear()
    held = a.lvm.gates['lvremove'] = threading.Event()
    b = Agent(conf, hv, lvm=a.lvm)          # start-up has returned: the node serves
    try:
        wait_until(lambda: 'lvremove' in a.lvm.launches and 'ca-%s-root' % U1 in a.lvm.lvs,
                   what='the removal of the old disk held')
        assert U1 not in hv.domains                           # the half-made domain: gone
        assert b.manager.requests.get_instance(U1)['task'] == 'spawning'
        assert b.manager.requests.get_job(job_id)['state'] == 'queued'
        deleting = b.manager.requests.delete_instance(U1)['job_id']
        assert b.manager.requests.get_job(deleting)['state'] == 'queued'
        held.set()
        job = b.wait_job(job_id)
        assert job['state'] == 'done' and job['attempts'] == 2, job['reason']
        assert b.wait_job(deleting)['state'] == 'done'
        assert a.lvm.lvs == {} and U1 not in hv.domains
        assert a.lvm.launches.count('lvcreate') == 2          # A's, and the boot run again
    finally:
        held.set()
        gate.set()
        b.stop()


def test_a_boot_interrupted_after_the_domain_started_is_done(conf, hv):
    a, gate, job_id = _interrupted(conf, hv, 'createWithFlags')
    hv.gates.clear()
    gate.set()            # A's create goes through, but A is gone: the journal says running
    wait_until(lambda: hv.domains[U1].run_state == fakelibvirt.VIR_DOMAIN_RUNNING,
               what='the domain to run')
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        assert b.manager.requests.get_job(job_id)['state'] == 'done'
        assert b.manager.requests.get_instance(U1)['vm_state'] == 'active'
        assert b.manager.reconciled == {'finish_boot': 1}
        b.wait_reported(U1, 'active')
    finally:
        b.stop()


def test_a_boot_interrupted_too_often_fails_with_the_reason_and_leaves_nothing(conf, hv):
    conf.set_override('max_boot_attempts', 1, group='jobs')
    a, gate, job_id = _interrupted(conf, hv, 'createWithFlags', disk_gb=1)
    hv.gates.clear()
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        job = b.manager.requests.get_job(job_id)
        assert job['state'] == 'failed' and 'interrupted by agent restarts' in job['reason']
        assert b.manager.requests.get_instance(U1)['vm_state'] == 'error'
        assert U1 not in hv.domains
        # Its disk and directory go after start-up (zeroing a disk takes seconds).
        wait_until(lambda: a.lvm.lvs == {} and not b.manager.instances[U1].lock.locked(),
                   what='the disk removed')
        assert not os.path.exists(os.path.join(conf.instances_path, U1))
        b.wait_reported(U1, 'error')
    finally:
        gate.set()
        b.stop()


def test_orphans_are_removed_by_their_tags_and_markers_and_nothing_else(conf, hv):
    a = Agent(conf, hv)
    a.stop()
    orphan = str(uuidlib.uuid4())
    tags = {'compute-agent', 'ca-instance-' + orphan}
    a.lvm.lvs['ca-%s-root' % orphan] = {'size': GiB, 'tags': tags}
    a.lvm.lvs['ca-%s-root' % U1] = {'size': GiB, 'tags': set()}       # not ours
    instancedir.InstanceDirs(conf.instances_path).create(orphan)
    os.makedirs(os.path.join(conf.instances_path, U1))                # no marker: not ours
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        assert list(a.lvm.lvs) == ['ca-%s-root' % U1]
        assert sorted(os.listdir(conf.instances_path)) == [U1]
        assert b.manager.reconciled == {'orphan_disks': 1, 'orphan_dirs': 1}
    finally:
        b.stop()


def test_a_domain_without_a_record_is_adopted_and_reported_not_killed(conf, hv):
    a = Agent(conf, hv)
    a.wait_job(a.manager.requests.boot_instance(boot_spec(vcpus=2))['job_id'])
    a.stop()
    os.unlink(conf.jobs.journal)          # the journal is lost
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        assert hv.domains[U1].run_state == fakelibvirt.VIR_DOMAIN_RUNNING
        assert b.manager.requests.get_instance(U1)['vm_state'] == 'active'
        assert b.manager.tracker.claim_of(U1).vcpus == 2     # sizes from the domain metadata
        b.wait_reported(U1, 'active')
    finally:
        b.stop()


def test_jobs_and_failed_boots_survive_a_restart(conf, hv):
    a = Agent(conf, hv)
    hv.fail_next['createWithFlags'] = fakelibvirt.libvirtError('no more memory')
    job_id = a.manager.requests.boot_instance(boot_spec())['job_id']
    assert a.wait_job(job_id)['state'] == 'failed'
    a.stop()
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        assert b.manager.requests.get_job(job_id)['reason'] == a.manager.requests.get_job(job_id)['reason']
        assert b.manager.requests.get_instance(U1)['vm_state'] == 'error'
        again = b.manager.requests.boot_instance(boot_spec())
        assert again == {'job_id': job_id, 'uuid': U1, 'existing': True}
        assert b.wait_job(b.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
    finally:
        b.stop()


def test_after_a_libvirtd_reconnect_orphans_are_removed_and_instances_kept(agent, hv):
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(disk_gb=1))['job_id'])
    orphan = str(uuidlib.uuid4())
    tags = {'compute-agent', 'ca-instance-' + orphan}
    agent.lvm.lvs['ca-%s-root' % orphan] = {'size': GiB, 'tags': tags}
    instancedir.InstanceDirs(agent.manager.instances_path).create(orphan)
    hv.restart()
    wait_until(lambda: agent.manager.reconciled['orphan_dirs'] == 1, what='the orphans to go')
    assert list(agent.lvm.lvs) == ['ca-%s-root' % U1]
    assert sorted(instancedir.InstanceDirs(agent.manager.instances_path).owned()) == [U1]
    assert agent.manager.requests.get_instance(U1)['vm_state'] == 'active'


def test_a_directory_named_like_an_instance_but_not_marked_is_never_touched(conf, hv):
    # Directories are recognised by their marker only, never by name: a directory an operator
    # made under instances_path with a uuid name stays, through start-up, a boot of that uuid
    # (which fails, naming it) and its delete.
    dirs = instancedir.InstanceDirs(conf.instances_path)
    stranger = dirs.path(U1)
    os.makedirs(stranger)
    with open(os.path.join(stranger, 'notes.txt'), 'w') as f:
        f.write('not the agent\'s')
    a = Agent(conf, hv)
    try:
        assert os.path.exists(os.path.join(stranger, 'notes.txt'))
        job = a.wait_job(a.manager.requests.boot_instance(boot_spec(U1))['job_id'])
        assert job['state'] == 'failed' and 'is not marked as this agent' in job['reason']
        assert hv.domains == {}
        a.wait_job(a.manager.requests.delete_instance(U1)['job_id'])
        dirs.remove(U1)
        assert os.listdir(stranger) == ['notes.txt']
    finally:
        a.stop()
