"""Warm boots on real QEMU: a pool of saved spares fills in the background; instances restored
from them are ready at once, each learns its own identity (the test guest prints what it reads
on its identity port: "guest-identity: {...}"), and everything else (delete, restarts,
crashes in the middle of a save or a restore: tests/functional/test_crash_points.py) treats
them like any instance.

The libvirt calls are read from the agent's libvirt client log (as in test_rpc_count): the warm
path sends ONE remote call before the guest is ready, restoreFlags; the job then makes the
domain persistent (defineXML), after the ready event.
"""
import calendar
import json
import os
import re
import subprocess
import sys
import time

import libvirt
import pytest

from tests.functional import conftest

POOL_SIZE = 5
CMDLINE = 'console=ttyS0 quiet no_timer_check'
FLAVOR = ('vcpus = 1\nmemory_mb = 128\nkernel = test-vmlinuz\ninitrd = test-initrd.img\n'
          'cmdline = %s\ndisk_gb = 1\n' % CMDLINE)
REMOTE_PROGRAM = 0x20008086
PROCS = {10: 'DomainCreateXML', 11: 'DomainDefineXML', 233: 'DomainRestoreFlags',
         232: 'DomainSaveFlags', 235: 'DomainSaveImageGetXMLDesc', 24: 'DomainLookupByUUID',
         14: 'DomainGetXMLDesc', 12: 'DomainDestroy', 35: 'DomainUndefine'}
CALL = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\+0000: .*RPC_CLIENT_MSG_TX_QUEUE: '
                  r'.* prog=%d vers=\d+ proc=(\d+) type=0 ' % REMOTE_PROGRAM, re.M)


@pytest.fixture(scope='module')
def warm_node(tmp_path_factory):
    conftest._check_node()
    workdir = str(tmp_path_factory.mktemp('warmnode'))
    log = os.path.join(workdir, 'libvirt-client.log')
    config = ('[resources]\naudit_interval = 0\n'
              '[warm]\npools = tiny,none\nquiet_seconds = 1\n'
              '[warm_pool:tiny]\nsize = %d\n%s[warm_pool:none]\nsize = 0\n%s'
              % (POOL_SIZE, FLAVOR, FLAVOR))
    node = conftest.Node(workdir, extra_config=config,
                         agent_env={'LIBVIRT_LOG_FILTERS': '1:rpc 4:*',
                                    'LIBVIRT_LOG_OUTPUTS': '1:file:%s' % log})
    node.client_log = log
    yield from conftest._run_node(node)


def _spares(node) -> dict:
    return node.compute.get_stats(node.host)['manager']['warm']['spares']


def _full(node, timeout: float = 300.0) -> None:
    """Until the pool holds POOL_SIZE saved spares and no spare is being made."""
    deadline = time.monotonic() + timeout
    while _spares(node).get('tiny') != POOL_SIZE or conftest.spare_records(node, 'making'):
        assert time.monotonic() < deadline, 'pool not full: %s' % _spares(node)
        time.sleep(0.5)


def _calls(node, since: int) -> tuple[list[tuple[float, str]], int]:
    """(time, remote call) the agent sent after byte ``since`` of its client log; the end."""
    with open(node.client_log, 'rb') as f:
        f.seek(since)
        data = f.read()
    out = []
    for stamp, proc in CALL.findall(data.decode('utf-8', 'replace')):
        when = calendar.timegm(time.strptime(stamp[:19], '%Y-%m-%d %H:%M:%S'))
        out.append((when + float(stamp[19:]), PROCS.get(int(proc), 'proc %s' % proc)))
    return out, since + len(data)


def _leaves_nothing(node, uuids, spare_domains) -> None:
    """No domain, directory, disk or identity socket of these deleted instances is left."""
    left = {d for d, m in node.host_domains().items() if m.get('uuid') in uuids}
    assert not left and not (set(spare_domains) & set(node.host_domains()))
    assert not set(uuids) & set(os.listdir(node.instances))
    sockets = '/run/compute-agent/identity'
    assert not {u + '.sock' for u in uuids} & set(os.listdir(sockets))


def test_five_warm_boots_at_once_are_ready_each_with_its_own_identity(warm_node):
    node = warm_node
    _full(node)
    spares = set(conftest.spare_records(node, 'saved'))
    _, mark = _calls(node, 0)
    specs = [{'uuid': node.spec()['uuid'], 'pool': 'tiny', 'name': 'warm-%d' % i}
             for i in range(POOL_SIZE)]
    jobs = {s['uuid']: node.boot(s)['job_id'] for s in specs}
    uuids = list(jobs)
    node.wait_ready(uuids)
    finished = {u: node.wait_job(j) for u, j in jobs.items()}
    # As libvirt counts them, every remote call from the requests to the last job's end: one
    # restore per boot, all sent before any guest was ready, then one define per boot that
    # makes its domain persistent (after its ready event); nothing else (no lookup, no XML).
    calls, mark = _calls(node, mark)
    end = max(job['finished_at'] for job in finished.values())
    hot = [(t, c) for t, c in calls if t <= end + 0.001]
    assert sorted(c for _, c in hot) == ['DomainDefineXML'] * 5 + ['DomainRestoreFlags'] * 5, hot
    ready_at = min(node.compute.get_instance(node.host, u)['ready_at'] for u in uuids)
    first_define = min(t for t, c in hot if c == 'DomainDefineXML')
    restores = [t for t, c in hot if c == 'DomainRestoreFlags']
    assert max(restores) <= first_define and ready_at <= first_define + 0.001, (
        ready_at, hot)
    domains = {}
    for uuid, job in finished.items():
        assert job['state'] == 'done' and job['result'].startswith('warm: hit, spare ')
        spare = job['result'].split()[3]
        assert spare in spares
        inst = node.compute.get_instance(node.host, uuid)
        assert inst['domain'] == 'ca-' + spare and inst['readiness'] == 'ready'
        domains[uuid] = spare
        line = node.wait_console(uuid, 'guest-identity: ', timeout=60)
        identity = json.loads(line.split('guest-identity: ', 1)[1].splitlines()[0])
        assert identity == {'uuid': uuid, 'name': inst['name'], 'pool': 'tiny'}
    assert len(set(domains.values())) == POOL_SIZE          # five distinct spares
    for uuid in uuids:
        node.compute.delete_instance(node.host, uuid)
    node.wait_states(uuids, ['deleted'])
    _leaves_nothing(node, uuids, domains.values())


def test_a_warm_instance_stops_and_starts_as_its_own_domain(warm_node):
    node = warm_node
    _full(node)
    uuid = node.spec()['uuid']
    job = node.wait_job(node.boot({'uuid': uuid, 'pool': 'tiny', 'name': 'again'})['job_id'])
    spare = job['result'].split()[3]
    node.wait_ready([uuid])
    node.wait_console(uuid, 'guest-identity: {')
    assert node.wait_job(node.compute.stop_instance(node.host, uuid, timeout=0)['job_id'])[
        'state'] == 'done'
    assert spare in node.host_domains()          # persistent: still defined, shut off
    assert node.wait_job(node.compute.start_instance(node.host, uuid)['job_id'])[
        'state'] == 'done'
    node.wait_ready([uuid])                      # booted cold from its own disk: ready again
    console = node.wait_console(uuid, conftest.MARKER)
    deadline = time.monotonic() + 60             # and it learned its identity again
    while node.console(uuid).count('guest-identity: {') < 2:
        assert time.monotonic() < deadline, console[-500:]
        time.sleep(0.2)
    node.delete([uuid])
    _leaves_nothing(node, [uuid], [spare])


def test_a_warm_boot_with_an_empty_pool_boots_cold_and_says_so(warm_node):
    node = warm_node
    uuid = node.spec()['uuid']
    job = node.wait_job(node.boot({'uuid': uuid, 'pool': 'none'})['job_id'])
    assert job['state'] == 'done' and job['result'] == 'warm: miss, pool empty'
    assert job['libvirt_calls_by_op'] == {'defineXML': 1, 'createWithFlags': 1}
    node.wait_ready([uuid])
    # the same devices as a spare's: it learns its identity on the same port
    assert '"uuid": "%s"' % uuid in node.wait_console(uuid, 'guest-identity: {', timeout=60)
    assert node.compute.get_instance(node.host, uuid)['domain'] == 'ca-' + uuid
    node.delete([uuid])
    _leaves_nothing(node, [uuid], [])


def test_a_spec_a_spare_cannot_be_is_refused(warm_node):
    node = warm_node
    from agent import exception
    for spec, why in (({'pool': 'tiny', 'memory_mb': 256}, 'memory_mb: pool tiny boots 128'),
                      ({'pool': 'tiny', 'nics': [{'type': 'user', 'mac': '52:54:00:00:00:09'}]},
                       "keeps its spare's MAC"),
                      ({'pool': 'big'}, "no warm pool 'big'")):
        with pytest.raises(exception.InvalidSpec, match=why):
            node.compute.boot_instance(node.host, dict(spec, uuid=node.spec()['uuid']))


def test_spares_survive_an_agent_restart(warm_node):
    node = warm_node
    _full(node)
    before = set(conftest.spare_records(node, 'saved'))
    node.stop('agent')
    node.start('agent')
    assert set(conftest.spare_records(node)) == before and _spares(node) == {'tiny': POOL_SIZE}
    stats = node.compute.get_stats(node.host)['manager']
    assert stats['reconciled'].get('spares_kept') == POOL_SIZE and stats['warm']['made'] == 0
    resources = node.compute.get_resources(node.host)
    assert resources['reserved']['disk_gb'] == POOL_SIZE


def test_compute_ctl_counts_warm_boots_once_their_jobs_ended(warm_node):
    """The pool summary of ``compute-ctl boot --pool`` reads each job's result after the job
    ended (a warm job ends after its guest is ready: read earlier, it has no result)."""
    node = warm_node
    _full(node)
    out = subprocess.run(
        [sys.executable, '-m', 'agent.cmd.ctl', '--config-file', node.config,
         '--config-file', conftest.CONTROL_CREDS, 'boot', '--pool', 'tiny', '--count', '2',
         '--wait', '--ready'], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    uuids = re.findall(r'^accepted (\S+) job', out.stdout, re.M)
    node.created.update(uuids)
    assert 'pool tiny: 2 warm (restored from saved spares), 0 cold\n' in out.stdout, out.stdout
    node.delete(uuids)


@pytest.fixture(scope='module')
def warm_lvm_node(tmp_path_factory):
    """A pool of one on the LVM backend (a private loop-backed VG; without device-mapper
    the harness exposes each LV through a loop device at its /dev/VG/LV path)."""
    conftest._check_node()
    workdir = str(tmp_path_factory.mktemp('warmlvmnode'))
    yield from conftest.run_node_on_vg(
        workdir, conftest.lvm_harness.LoopVolumeGroup(workdir),
        extra_config='[resources]\naudit_interval = 0\n[warm]\npools = tiny\nquiet_seconds = 1\n'
                     '[warm_pool:tiny]\nsize = 1\n' + FLAVOR)


def test_on_lvm_a_warm_instance_takes_its_spares_lv(warm_lvm_node):
    node = warm_lvm_node
    deadline = time.monotonic() + 300
    while _spares(node).get('tiny') != 1:
        assert time.monotonic() < deadline, 'pool not full'
        time.sleep(0.5)
    spare = next(iter(conftest.spare_records(node, 'saved')))
    lv = 'ca-%s-root' % spare
    assert 'ca-instance-' + spare in node.vg.lvs()[lv]['tags']
    uuid = node.spec()['uuid']
    job = node.wait_job(node.boot({'uuid': uuid, 'pool': 'tiny'})['job_id'])
    assert job['result'] == 'warm: hit, spare %s of pool tiny' % spare
    node.wait_ready([uuid])
    assert node.vg.lvs()[lv]['tags'] == {'compute-agent', 'ca-instance-' + uuid}
    assert '"uuid": "%s"' % uuid in node.wait_console(uuid, 'guest-identity: {')
    conn = libvirt.open(conftest.URI)
    try:
        xml = conn.lookupByUUIDString(spare).XMLDesc(0)
    finally:
        conn.close()
    assert "<source dev='/dev/%s/%s'" % (node.vg.name, lv) in xml
    node.delete([uuid])
    assert lv not in node.vg.lvs()
