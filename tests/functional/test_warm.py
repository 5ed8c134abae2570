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
# The same guest on a kernel with the vmgenid driver (Debian's generic kernel; slower to boot).
GEN_FLAVOR = FLAVOR.replace('test-vmlinuz', 'test-vmgenid-vmlinuz').replace(
    'test-initrd.img', 'test-vmgenid-initrd.img')
GEN_SIZE = 2
REMOTE_PROGRAM = 0x20008086
PROCS = {10: 'DomainCreateXML', 11: 'DomainDefineXML', 233: 'DomainRestoreFlags',
         28: 'DomainResume', 264: 'DomainSetMetadata',
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


def _boots_at_once(node, name: str, n: int):
    """``n`` boots of pool tiny sent at once, ready, their jobs ended: (uuid -> job, the
    remote calls libvirt's client log shows from the requests to the last job's end, the
    first ready_at)."""
    _, mark = _calls(node, 0)
    specs = [{'uuid': node.spec()['uuid'], 'pool': 'tiny', 'name': '%s-%d' % (name, i)}
             for i in range(n)]
    jobs = {s['uuid']: node.boot(s)['job_id'] for s in specs}
    node.wait_ready(list(jobs))
    finished = {u: node.wait_job(j) for u, j in jobs.items()}
    calls, _ = _calls(node, mark)
    end = max(job['finished_at'] for job in finished.values())
    ready_at = min(node.compute.get_instance(node.host, u)['ready_at'] for u in jobs)
    return finished, [(t, c) for t, c in calls if t <= end + 0.001], ready_at


def _leaves_nothing(node, uuids, spare_domains) -> None:
    """No domain, directory, disk or identity socket of these deleted instances is left."""
    left = {d for d, m in node.host_domains().items() if m.get('uuid') in uuids}
    assert not left and not (set(spare_domains) & set(node.host_domains()))
    # nor a hot spare's link to one (agent.instancedir)
    assert not (set(uuids) | set(spare_domains)) & set(os.listdir(node.instances))
    sockets = '/run/compute-agent/identity'
    assert not {u + '.sock' for u in uuids} & set(os.listdir(sockets))


@pytest.mark.both_runtimes
def test_five_warm_boots_at_once_are_ready_each_with_its_own_identity(warm_node):
    node = warm_node
    _full(node)
    spares = set(conftest.spare_records(node, 'saved'))
    # As libvirt counts them, every remote call from the requests to the last job's end: one
    # restore per boot, then one define that makes its domain persistent (after its ready
    # event); nothing else (no lookup, no XML). Each job's own calls say which is whose; the
    # client log only that the first guest was ready before any define was sent (how the
    # boots interleave depends on when each request arrives).
    finished, hot, ready_at = _boots_at_once(node, 'warm', POOL_SIZE)
    uuids = list(finished)
    assert sorted(c for _, c in hot) == ['DomainDefineXML'] * 5 + ['DomainRestoreFlags'] * 5, hot
    assert hot[0][1] == 'DomainRestoreFlags', hot
    assert ready_at <= min(t for t, c in hot if c == 'DomainDefineXML') + 0.001, (ready_at, hot)
    for job in finished.values():
        assert job['libvirt_calls_by_op'] == {'restoreFlags': 1, 'defineXML': 1}, job
    domains = {}
    for uuid, job in finished.items():
        assert job['state'] == 'done' and job['result'].startswith('warm: hit, spare ')
        spare = job['result'].split()[3]
        assert spare in spares
        inst = node.compute.get_instance(node.host, uuid)
        assert inst['domain'] == 'ca-' + spare and inst['readiness'] == 'ready'
        domains[uuid] = spare
        [identity] = _identities(node, uuid, 1)
        assert abs(identity.pop('time') - time.time()) < 300      # the host's clock
        assert identity == {'uuid': uuid, 'name': inst['name'], 'pool': 'tiny',
                            'seq': identity['seq']}
    assert len(set(domains.values())) == POOL_SIZE          # five distinct spares
    for uuid in uuids:
        node.compute.delete_instance(node.host, uuid)
    node.wait_states(uuids, ['deleted'])
    _leaves_nothing(node, uuids, domains.values())


def _randoms(node, uuid: str, timeout: float = 60.0) -> list[str]:
    """The random bytes the guest of ``uuid`` printed after each identity it took on."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(r'^guest-random: ([0-9a-f]{32})\r?$', node.console(uuid), re.M)
        if found:
            return found
        assert time.monotonic() < deadline, node.console(uuid)[-500:]
        time.sleep(0.2)


def _identities(node, uuid: str, count: int, timeout: float = 60.0) -> list[dict]:
    """The identity lines the guest of ``uuid`` printed, once it printed ``count``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = re.findall(r'^guest-identity: (\{.*\})\r?$', node.console(uuid), re.M)
        if len(lines) >= count:
            return [json.loads(line) for line in lines]
        assert time.monotonic() < deadline, node.console(uuid)[-500:]
        time.sleep(0.2)


@pytest.mark.both_runtimes
def test_a_warm_instance_stops_and_starts_as_its_own_domain(warm_node):
    """Stopped and started: a new QEMU, told its identity again; then reset behind the
    agent's back (as a guest's own reboot: the agent only sees libvirt's reboot event): told
    again, and ready again only once it answered."""
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
    started = _identities(node, uuid, 2)         # and it learned its identity again
    ready_at = node.compute.get_instance(node.host, uuid)['ready_at']
    conn = libvirt.open(conftest.URI)
    try:
        conn.lookupByUUIDString(spare).reset(0)
    finally:
        conn.close()
    again = _identities(node, uuid, 3)[2]
    assert again['uuid'] == uuid and again['seq'] > started[1]['seq'] > started[0]['seq']
    deadline = time.monotonic() + 120
    while node.compute.get_instance(node.host, uuid)['ready_at'] in (None, ready_at):
        assert time.monotonic() < deadline, 'not ready again after the reset'
        time.sleep(0.2)
    assert node.compute.get_instance(node.host, uuid)['readiness'] == 'ready'
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


@pytest.mark.both_runtimes
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
    """A pool of one saved spare and one of one hot spare on the LVM backend (a private
    loop-backed VG; without device-mapper the harness exposes each LV through a loop device
    at its /dev/VG/LV path)."""
    conftest._check_node()
    workdir = str(tmp_path_factory.mktemp('warmlvmnode'))
    yield from conftest.run_node_on_vg(
        workdir, conftest.lvm_harness.LoopVolumeGroup(workdir),
        extra_config='[resources]\naudit_interval = 0\n[warm]\npools = tiny,hot\n'
                     'quiet_seconds = 1\n[warm_pool:tiny]\nsize = 1\n' + FLAVOR
                     + '[warm_pool:hot]\nsize = 0\nhot = 1\n' + FLAVOR)


def _taken_on_lvm(node, pool: str, kind: str) -> tuple[str, str, str]:
    """Boot one instance from pool ``pool``'s one ``kind`` spare (saved or hot) on the LVM
    node: the spare's LV becomes the instance's by its tags (no rename: a paused QEMU holds
    it open), the guest is itself, the running domain uses that LV. (uuid, spare, LV)."""
    deadline = time.monotonic() + 300
    stat = 'hot' if kind == 'hot' else 'spares'
    while node.compute.get_stats(node.host)['manager']['warm'][stat].get(pool) != 1:
        assert time.monotonic() < deadline, 'no %s spare' % kind
        time.sleep(0.5)
    spare = next(iter(conftest.spare_records(node, kind)))
    lv = 'ca-%s-root' % spare
    assert 'ca-instance-' + spare in node.vg.lvs()[lv]['tags']
    uuid = node.spec()['uuid']
    job = node.wait_job(node.boot({'uuid': uuid, 'pool': pool})['job_id'])
    assert job['result'] == '%s: hit, spare %s of pool %s' % (
        'hot' if kind == 'hot' else 'warm', spare, pool)
    node.created.add(uuid)
    node.wait_ready([uuid])
    assert node.vg.lvs()[lv]['tags'] == {'compute-agent', 'ca-instance-' + uuid}
    assert '"uuid": "%s"' % uuid in node.wait_console(uuid, 'guest-identity: {')
    conn = libvirt.open(conftest.URI)
    try:
        xml = conn.lookupByUUIDString(spare).XMLDesc(0)      # the running definition
    finally:
        conn.close()
    assert "<source dev='/dev/%s/%s'" % (node.vg.name, lv) in xml
    return uuid, spare, lv


def test_on_lvm_a_warm_instance_takes_its_spares_lv(warm_lvm_node):
    node = warm_lvm_node
    uuid, _, lv = _taken_on_lvm(node, 'tiny', 'saved')
    node.delete([uuid])
    assert lv not in node.vg.lvs()


def test_on_lvm_a_hot_instance_takes_its_paused_spares_lv(warm_lvm_node):
    """And keeps it across an agent restart."""
    node = warm_lvm_node
    uuid, spare, lv = _taken_on_lvm(node, 'hot', 'hot')
    node.stop('agent')
    node.start('agent')
    assert node.compute.get_instance(node.host, uuid)['vm_state'] == 'active'
    assert uuid in node.compute.get_storage(node.host)['disks']
    node.delete([uuid])
    assert lv not in node.vg.lvs()
    _leaves_nothing(node, [uuid], [spare])


# -- hot spares ------------------------------------------------------------------------------
HOT_SIZE = 2


@pytest.fixture(scope='module')
def hot_node(tmp_path_factory):
    """A pool that keeps two hot spares (paused in memory) and no saved one; a pool of two
    saved spares on the vmgenid kernel."""
    conftest._check_node()
    workdir = str(tmp_path_factory.mktemp('hotnode'))
    log = os.path.join(workdir, 'libvirt-client.log')
    node = conftest.Node(workdir, extra_config=(
        '[resources]\naudit_interval = 0\n[warm]\npools = tiny,gen\nquiet_seconds = 1\n'
        '[warm_pool:tiny]\nsize = 0\nhot = %d\n%s[warm_pool:gen]\nsize = %d\n%s'
        % (HOT_SIZE, FLAVOR, GEN_SIZE, GEN_FLAVOR)),
        agent_env={'LIBVIRT_LOG_FILTERS': '1:rpc 4:*', 'LIBVIRT_LOG_OUTPUTS': '1:file:%s' % log})
    node.client_log = log
    yield from conftest._run_node(node)


def _hot_full(node, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while (node.compute.get_stats(node.host)['manager']['warm']['hot'].get('tiny') != HOT_SIZE
           or _spares(node).get('gen') != GEN_SIZE or conftest.spare_records(node, 'making')):
        assert time.monotonic() < deadline, 'no hot spares'
        time.sleep(0.5)


@pytest.mark.both_runtimes
def test_hot_boots_at_once_are_one_resume_each_and_ready_as_themselves(hot_node):
    node = hot_node
    _hot_full(node)
    spares = set(conftest.spare_records(node, 'hot'))
    assert len(spares) == HOT_SIZE
    conn = libvirt.open(conftest.URI)
    try:
        assert {conn.lookupByUUIDString(u).state()[0] for u in spares} == {
            libvirt.VIR_DOMAIN_PAUSED}
    finally:
        conn.close()
    assert node.compute.get_resources(node.host)['reserved']['memory_mb'] == 128 * HOT_SIZE
    # As libvirt counts them: one resume per boot, the only call before its guest is ready;
    # the instance's metadata and persistent definition after its ready event (each job's
    # own calls; the client log: the first guest was ready before any call but a resume).
    finished, hot, ready_at = _boots_at_once(node, 'hot', HOT_SIZE)
    uuids = list(finished)
    assert sorted(c for _, c in hot) == sorted(
        ['DomainResume', 'DomainSetMetadata', 'DomainDefineXML'] * HOT_SIZE), hot
    assert hot[0][1] == 'DomainResume', hot
    assert ready_at <= min(t for t, c in hot if c != 'DomainResume') + 0.001, (ready_at, hot)
    for job in finished.values():
        assert job['libvirt_calls_by_op'] == {'resume': 1, 'setMetadata': 1,
                                              'defineXML': 1}, job
    randoms = []
    for uuid, job in finished.items():
        assert job['result'].startswith('hot: hit, spare '), job
        spare = job['result'].split()[3]
        assert spare in spares
        inst = node.compute.get_instance(node.host, uuid)
        assert inst['domain'] == 'ca-' + spare and inst['readiness'] == 'ready'
        [identity] = _identities(node, uuid, 1)      # its console log moved with it
        assert identity['uuid'] == uuid and identity['name'] == inst['name']
        assert conftest.MARKER in node.console(uuid)  # the spare's boot, before the pause
        randoms.append(_randoms(node, uuid)[0])
    assert len(set(randoms)) == HOT_SIZE
    # The instance is its own domain now: an agent restart finds it by its metadata.
    node.stop('agent')
    node.start('agent')
    for uuid in uuids:
        assert node.compute.get_instance(node.host, uuid)['vm_state'] == 'active'
    node.delete(uuids)
    _leaves_nothing(node, uuids, [j['result'].split()[3] for j in finished.values()])


def test_restored_guests_reseed_from_a_new_generation_id_and_differ(hot_node):
    """Pool gen's guests run a kernel with the vmgenid driver: libvirt gives each restored
    domain a new generation id, and its kernel says it reseeded its RNG from it (on its
    console after the restore); two of them print different random bytes."""
    node = hot_node
    _hot_full(node)
    uuids = []
    for i in range(GEN_SIZE):
        uuid = node.spec()['uuid']
        job = node.wait_job(node.boot({'uuid': uuid, 'pool': 'gen', 'name': 'gen-%d' % i})[
            'job_id'])
        assert job['result'].startswith('warm: hit, spare '), job
        uuids.append(uuid)
    node.wait_ready(uuids)
    randoms = []
    for uuid in uuids:
        node.wait_console(uuid, 'guest-kmsg: random: crng reseeded due to virtual machine fork',
                          timeout=60)
        randoms.append(_randoms(node, uuid)[0])
    assert len(set(randoms)) == GEN_SIZE, randoms
    node.delete(uuids)
    _leaves_nothing(node, uuids, [])


# -- a hot instance's console past virtlogd's rollover -----------------------------------------
CONSOLE_MAX = 1024 * 1024          # virtlogd's max_size (tools/setup-node.sh)


@pytest.fixture(scope='module')
def flood_node(tmp_path_factory):
    """One hot spare whose guest writes 2 MiB to its console at every boot ("ca.flood=2")."""
    conftest._check_node()
    node = conftest.Node(str(tmp_path_factory.mktemp('floodnode')), extra_config=(
        '[resources]\naudit_interval = 0\n[warm]\npools = flood\nquiet_seconds = 1\n'
        '[warm_pool:flood]\nsize = 0\nhot = 1\n%s'
        % FLAVOR.replace(CMDLINE, CMDLINE + ' ca.flood=2')))
    yield from conftest._run_node(node)


def _console_files(node, uuid: str) -> str:
    """Everything the instance's console files hold, oldest first."""
    directory = os.path.join(node.instances, uuid)
    out = ''
    for name in ('console.log.1', 'console.log.0', 'console.log'):
        try:
            with open(os.path.join(directory, name), errors='replace') as f:
                out += f.read()
        except FileNotFoundError:
            pass
    return out


def test_a_hot_instances_console_rolls_over_in_its_own_directory(flood_node):
    """virtlogd holds the path the spare's QEMU started with and rolls the log over by it
    (rename, new file); the spare's console moved into the instance's directory at the take.
    A reboot makes the guest write 2 MiB more: the rollovers happen in the instance's
    directory (through the link in the spare's place), and the console goes on to the end."""
    node = flood_node
    deadline = time.monotonic() + 300
    while node.compute.get_stats(node.host)['manager']['warm']['hot'].get('flood') != 1:
        assert time.monotonic() < deadline, 'no hot spare'
        time.sleep(0.5)
    uuid = node.spec()['uuid']
    job = node.wait_job(node.boot({'uuid': uuid, 'pool': 'flood', 'name': 'flood'})['job_id'])
    assert job['result'].startswith('hot: hit, spare '), job
    spare = job['result'].split()[3]
    node.created.add(uuid)
    node.wait_ready([uuid])
    rebooted = time.time()
    node.wait_job(node.compute.reboot_instance(node.host, uuid, hard=True)['job_id'])
    deadline = time.monotonic() + 120      # ready again: the reboot's marker is printed
    while (node.compute.get_instance(node.host, uuid)['ready_at'] or 0) < rebooted:
        assert time.monotonic() < deadline, 'not ready after the reboot'
        time.sleep(0.2)
    deadline = time.monotonic() + 600      # then its 2 MiB and the last line
    while 'guest-flood: done' not in _console_files(node, uuid).rsplit(conftest.MARKER, 1)[-1]:
        assert time.monotonic() < deadline, 'the console stopped: %r' % (
            sorted(os.listdir(os.path.join(node.instances, uuid))),)
        time.sleep(1)
    directory = os.path.join(node.instances, uuid)
    sizes = {n: os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)
             if n.startswith('console.log')}
    assert 'console.log.0' in sizes and all(s <= CONSOLE_MAX for s in sizes.values()), sizes
    assert 'guest-flood: done' in node.compute.get_console_output(node.host, uuid, 4096)['output']
    assert os.readlink(os.path.join(node.instances, spare)) == uuid
    node.delete([uuid])
    _leaves_nothing(node, [uuid], [spare])
