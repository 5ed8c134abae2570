"""Faults the agent must survive, with real daemons: kill -9 of the agent in the middle of a
boot storm, libvirtd killed while instances boot, RabbitMQ stopped and started, the conductor
away for a while, the agent restarted under a stream of requests. Each test ends with nothing
of its instances left."""
import concurrent.futures
import os
import subprocess
import time

import libvirt
import pytest

from tests.functional import conftest
from tests.functional import lvm_harness


@pytest.fixture(scope='module')
def fault_node(tmp_path_factory):
    conftest._check_node()
    workdir = str(tmp_path_factory.mktemp('faultnode'))
    extra = '[conductor]\nreport_timeout = 2\nreport_retry_max = 1\n'
    yield from conftest.run_node_on_vg(workdir, lvm_harness.LoopVolumeGroup(workdir),
                                       extra_config=extra)


def _lv(uuid):
    return 'ca-%s-root' % uuid


def _our_lvs(node):
    return {name for name, lv in node.vg.lvs().items() if 'compute-agent' in lv['tags']}


def _marked_dirs(node):
    return {d for d in os.listdir(node.instances)
            if os.path.exists(os.path.join(node.instances, d, '.compute-agent-instance'))}


def _boot_all(node, specs):
    with concurrent.futures.ThreadPoolExecutor(len(specs)) as pool:
        return list(pool.map(node.boot, specs))


def _one_active(node, name):
    """One instance without a disk, booted and ACTIVE."""
    node.with_disk = set()
    spec = node.spec(name=name)
    node.boot(spec)
    node.wait_states([spec['uuid']], ['active'])
    return spec


def _assert_nothing_orphaned(node, rows):
    active = {u for u, r in rows.items() if r['vm_state'] == 'active'}
    failed = {u: r['fault'] for u, r in rows.items() if r['vm_state'] == 'error'}
    assert all(failed.values()), failed                    # every failure says why
    assert node.domains() == active
    assert _our_lvs(node) == {_lv(u) for u in active if u in node.with_disk}
    assert _marked_dirs(node) & set(rows) == active
    return active, failed


def test_kill_9_in_the_middle_of_twenty_boots(fault_node):
    node = fault_node
    specs = [node.spec(disk_gb=1, name='k%d' % i) for i in range(20)]
    node.with_disk = {s['uuid'] for s in specs}
    uuids = [s['uuid'] for s in specs]
    answers = _boot_all(node, specs)
    deadline = time.monotonic() + 120
    while len(node.domains()) < 3:            # in the middle: some domains made, not all
        assert time.monotonic() < deadline
        time.sleep(0.02)
    node.kill('agent')
    at_kill = len(node.domains()), len(_our_lvs(node))
    node.start('agent')
    rows = node.wait_states(uuids, ['active', 'error'], timeout=400)
    active, failed = _assert_nothing_orphaned(node, rows)
    jobs = [node.compute.get_job(node.host, a['job_id']) for a in answers]   # from the journal
    assert all(j['state'] in ('done', 'failed') for j in jobs)
    assert all(j['reason'] for j in jobs if j['state'] == 'failed')
    reconciled = node.compute.get_stats(node.host)['manager']['reconciled']
    print('\nkill -9 with %d domains and %d LVs made: %d active, %d failed; reconciled %s'
          % (at_kill + (len(active), len(failed), reconciled)))
    assert sum(reconciled.get(k, 0) for k in ('resume_boot', 'finish_boot', 'fail_boot')) > 0
    node.delete(uuids)
    assert node.domains() == set() and not _our_lvs(node)
    assert not _marked_dirs(node) & set(uuids)


@pytest.mark.disruptive
@pytest.mark.both_runtimes
def test_libvirtd_killed_while_instances_boot(fault_node):
    node = fault_node
    specs = [node.spec(name='lv%d' % i) for i in range(10)]
    node.with_disk = set()
    uuids = [s['uuid'] for s in specs]
    answers = _boot_all(node, specs)
    try:
        _libvirtd_killed(node, uuids, [a['job_id'] for a in answers])
    finally:       # nothing left for the next tests, even when this one fails
        node.delete(uuids)
    assert node.domains() == set()


def _libvirtd_killed(node, uuids, job_ids):
    deadline = time.monotonic() + 120
    while True:                     # some boots done, the others still in flight
        states = [r['vm_state'] for r in node.conductor.list_instances(node.host)
                  if r['uuid'] in uuids]
        if states.count('active') >= 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    conftest.stop_libvirtd(pause=1.0)   # boots in flight meet a dead libvirtd
    conftest.start_libvirtd()
    deadline = time.monotonic() + 300   # a restarted libvirtd may hold domain locks ~30 s
    while True:        # until the agent has reconnected, resynchronised and settled every boot
        rows = node.wait_states(uuids, ['active', 'error'], timeout=300)
        active = {u for u, r in rows.items() if r['vm_state'] == 'active'}
        # A boot cut off by libvirtd's exit stays running until settled; a domain destroyed
        # before that is (rightly) a boot that did not go through.
        settled = all(node.compute.get_job(node.host, j)['state'] in ('done', 'failed')
                      for j in job_ids)
        if settled and node.domains() == active == node.domains(running=True):
            break
        assert time.monotonic() < deadline, (active, node.domains(), node.log_tail('agent'))
        time.sleep(0.5)
    active, failed = _assert_nothing_orphaned(node, rows)
    assert node.domains(running=True) == active      # the conductor's view is libvirt's
    print('\nlibvirtd killed during 10 boots (%d active then): %d active, %d failed (%s)'
          % (states.count('active'), len(active), len(failed), sorted(set(failed.values()))))
    assert len(active) >= states.count('active')    # what ran before still runs
    # Events were re-registered: a domain destroyed now is seen, with no polling.
    if active:
        victim = sorted(active)[0]
        conn = libvirt.open(conftest.URI)
        conn.lookupByUUIDString(victim).destroy()
        conn.close()
        node.wait_states([victim], ['stopped'], timeout=60)


def _rabbitmq(action):
    if action == 'stop':
        conftest.settle_teardowns()        # no node is being torn down through it
        subprocess.run(['rabbitmqctl', '-q', 'stop'], check=True, capture_output=True)
        return
    subprocess.run(['rabbitmq-server', '-detached'], check=True, capture_output=True,
                   env=dict(os.environ, HOME='/var/lib/rabbitmq'))
    deadline = time.monotonic() + 120
    while subprocess.run(['rabbitmqctl', '-q', 'await_startup'], capture_output=True).returncode:
        assert time.monotonic() < deadline, 'RabbitMQ did not come back'
        time.sleep(0.5)


@pytest.mark.disruptive
@pytest.mark.both_runtimes
def test_rabbitmq_stopped_and_started(fault_node):
    node = fault_node
    first = _one_active(node, 'rmq1')
    _rabbitmq('stop')
    try:
        conn = libvirt.open(conftest.URI)            # a state change while RabbitMQ is down
        conn.lookupByUUIDString(first['uuid']).destroy()
        conn.close()
        time.sleep(2)
    finally:
        _rabbitmq('start')
    deadline = time.monotonic() + 120
    while True:                                       # the agent serves again
        try:
            node.compute.ping(node.host, timeout=5)
            break
        except Exception:
            assert time.monotonic() < deadline, node.log_tail('agent')
    node.wait_states([first['uuid']], ['stopped'], timeout=120)
    second = node.spec(name='rmq2')
    node.boot(second)
    node.wait_states([second['uuid']], ['active'])
    node.delete([first['uuid'], second['uuid']])
    assert node.domains() == set()


def test_conductor_away_for_a_while(fault_node):
    node = fault_node
    first = _one_active(node, 'cond1')
    node.stop('conductor')
    node.compute.delete_instance(node.host, first['uuid'])
    second = node.spec(name='cond2')
    node.wait_job(node.boot(second)['job_id'])
    time.sleep(3)                      # reports fail and are retried meanwhile
    assert node.compute.get_stats(node.host)['reporter']['send_failures'] > 0
    node.start('conductor')
    rows = node.wait_states([first['uuid'], second['uuid']], ['deleted', 'active'], timeout=60)
    assert rows[first['uuid']]['vm_state'] == 'deleted'
    assert rows[second['uuid']]['vm_state'] == 'active'
    node.delete([second['uuid']])
    assert node.domains() == set()


@pytest.mark.both_runtimes
def test_an_agent_restarted_under_a_stream_of_requests_answers_every_one(fault_node):
    """Requests that reach the agent while it stops wait in RabbitMQ for its restart (none is
    taken and dropped: ``agent.rpc.drain``), so no caller waits for its timeout."""
    node = fault_node

    def ping(i):
        assert node.compute.ping(node.host, timeout=60) == 'pong'
    answered, timeouts = conftest.calls_through_restart(node, 'agent', ping, 8)
    assert timeouts == [] and answered > 100
