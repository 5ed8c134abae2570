"""Every crash point (agent.crashpoints), reached deterministically on real libvirtd, QEMU,
RabbitMQ and LVM: the agent (or the conductor) is started with the point armed for one
instance, driven into the operation, and dies there by SIGKILL. It is started again, and then:

- the job ends as the user asked: an accepted boot ends done with the instance active and its
  guest ready; an accepted delete leaves nothing; a stop, start or reboot ends in its state.
  A request whose answer was lost with the process is sent again, as a control plane would;
- nothing is orphaned: no domain, disk, LV, directory, spare, unfinished job; the usage is
  the sum of the instances' sizes plus the spares' reservations;
- the conductor's view equals the agent's.

A point the operation never reaches fails its case (the process must die, and say which
point it died at). A point in the registry without a case here fails the suite.
"""
import operator
import os
import subprocess
import threading
import time
import uuid as uuidlib

import pytest

from agent import crashpoints
from agent.rpc import api as compute_api
from tests.functional import conftest

CMDLINE = 'console=ttyS0 quiet no_timer_check'
FLAVOR = ('vcpus = 1\nmemory_mb = 128\nkernel = test-vmlinuz\ninitrd = test-initrd.img\n'
          'cmdline = %s\ndisk_gb = 1\n' % CMDLINE)
WARM = ('[resources]\naudit_interval = 0\n[warm]\npools = tiny\nquiet_seconds = 1\n'
        '[warm_pool:tiny]\nsize = 1\n' + FLAVOR)

# point -> (node, scenario). Nodes: 'file' and 'lvm' each keep a pool of one saved spare,
# 'hot' (file storage) one of one hot spare.
CASES = {
    'dir.create.made': ('file', 'boot'),
    'disk.file.created': ('file', 'boot'),
    'journal.commit.before': ('file', 'boot'),
    'journal.commit.after': ('file', 'boot'),
    'boot.defined': ('file', 'boot'),
    'boot.started': ('file', 'boot'),
    'delete.destroyed': ('file', 'delete'),
    'delete.undefined': ('file', 'delete'),
    'disk.file.deleted': ('file', 'delete'),
    'dir.remove.renamed': ('file', 'delete'),
    'stop.sent': ('file', 'stop'),
    'start.sent': ('file', 'start'),
    'reboot.sent': ('file', 'reboot'),
    'sequence.reserve.before': ('file', 'start_up'),
    'sequence.reserve.after': ('file', 'start_up'),
    'conductor.store.before_commit': ('file', 'report'),
    'conductor.store.after_commit': ('file', 'report'),
    'spare.make.begun': ('file', 'spare'),
    'spare.make.started': ('file', 'spare'),
    'spare.save.saved': ('file', 'spare'),
    'spare.save.recorded': ('file', 'spare'),
    'spare.take.marked': ('file', 'warm_boot'),
    'disk.file.adopted': ('file', 'warm_boot'),
    'spare.take.restored': ('file', 'warm_boot'),
    'spare.discard.removing': ('file', 'warm_boot'),
    'warm.persist.before': ('file', 'warm_boot'),
    'spare.hot.paused': ('hot', 'spare'),
    'spare.take.resumed': ('hot', 'warm_boot'),
    'disk.lvm.created': ('lvm', 'boot'),
    'disk.lvm.adopted': ('lvm', 'warm_boot'),
    'disk.lvm.deleted': ('lvm', 'delete'),
}


def test_every_registered_point_has_a_case():
    assert set(crashpoints.POINTS) - set(CASES) == set(), 'points without a case'
    assert set(CASES) - set(crashpoints.POINTS) == set(), 'cases of no registered point'


@pytest.fixture(scope='module')
def crash_file_node(tmp_path_factory):
    conftest._check_node()
    node = conftest.Node(str(tmp_path_factory.mktemp('crashfile')), extra_config=WARM)
    yield from conftest._run_node(node)


@pytest.fixture(scope='module')
def crash_hot_node(tmp_path_factory):
    conftest._check_node()
    node = conftest.Node(str(tmp_path_factory.mktemp('crashhot')),
                         extra_config=WARM.replace('size = 1\n', 'size = 0\nhot = 1\n'))
    node.hot_pool = True
    yield from conftest._run_node(node)


@pytest.fixture(scope='module')
def crash_lvm_node(tmp_path_factory):
    """On a private loop-backed VG (each LV exposed through a loop device at /dev/VG/LV)."""
    conftest._check_node()
    workdir = str(tmp_path_factory.mktemp('crashlvm'))
    yield from conftest.run_node_on_vg(workdir, conftest.lvm_harness.LoopVolumeGroup(workdir),
                                       extra_config=WARM)


class Crash:
    """One armed run: the process ``name`` of ``node`` restarted with ``point`` armed (for
    ``uuid``), a request sent to it in the background, its death awaited."""

    def __init__(self, node, name: str, point: str, uuid: str | None = None,
                 wait: bool = True):
        self.node, self.name, self.point = node, name, point
        self.report = os.path.join(node.workdir, 'crash-%s' % uuidlib.uuid4().hex[:8])
        env = {crashpoints.ENV_POINT: point, crashpoints.ENV_REPORT: self.report}
        if uuid is not None:
            env[crashpoints.ENV_FOR] = uuid
        self._env = node.agent_env if name == 'agent' else node.conductor_env
        node.stop(name)
        self._env.update(env)
        if wait:
            node.start(name)
        else:
            node.launch(name)
        self.answer = None
        self._thread = None
        # Short: a request the process died in is never answered.
        self.api = compute_api.ComputeAPI(node.nodes, timeout=10)

    def send(self, call) -> None:
        """``call(api)`` in the background; its answer (or None) kept in ``answer``."""
        def run():
            try:
                self.answer = call(self.api)
            except Exception as exc:      # the process died with the request: no answer
                print('no answer (%s: %s)' % (type(exc).__name__, exc))
        self._thread = threading.Thread(target=run)
        self._thread.start()

    def died(self, timeout: float = 240.0) -> None:
        """The process dies at the point (fails if the point is never reached), then is
        started again, disarmed."""
        proc = self.node.procs[self.name]
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail('crash point %s never reached' % self.point)
        finally:
            for key in (crashpoints.ENV_POINT, crashpoints.ENV_FOR, crashpoints.ENV_REPORT):
                self._env.pop(key, None)
        self.node.procs.pop(self.name)
        assert proc.returncode == -9, 'exited with %s, not killed at %s: %s' % (
            proc.returncode, self.point, self.node.log_tail(self.name))
        with open(self.report) as f:
            assert f.read().split()[0] == self.point
        if self._thread is not None:
            self._thread.join()
        self.node.start(self.name)

    def again(self, call):
        """The answer, or (none came: lost with the process) the request sent again."""
        return self.answer if self.answer is not None else call(self.node.compute)


# -- what must hold after every case -----------------------------------------------------------
def _until(what: str, check, timeout: float = 240.0, detail=lambda: None) -> None:
    """Wait until ``check()`` holds (states converge by events and reports), at most
    ``timeout`` s; the failure shows ``detail()``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, '%s: %r' % (what, detail())
        time.sleep(0.2)


def consistent(node) -> dict:
    """Everything this module promises after a restart; the agent's instances by uuid."""
    host = node.host
    # The pool holds its one saved (hot) spare and nothing is being made.
    hot = getattr(node, 'hot_pool', False)
    kind, state = ('hot', 'hot') if hot else ('spares', 'saved')
    _until('pool refilled', lambda: node.compute.get_stats(host)['manager']['warm'][kind]
           .get('tiny') == 1 and all(r['state'] == state
                                     for r in conftest.spare_records(node).values()))
    jobs = node.compute.get_stats(host)['manager']['jobs_by_state']
    assert not {s: n for s, n in jobs.items() if s not in ('done', 'failed') and n}, jobs

    def views():
        # Both read afresh each time: a guest may still become ready meanwhile.
        mine = {i['uuid']: (i['vm_state'], i['power_state'], i['readiness'])
                for i in node.compute.list_instances(host)}
        theirs = {r['uuid']: (r['vm_state'], r['power_state'], r['readiness'])
                  for r in node.conductor.list_instances(host) if r['vm_state'] != 'deleted'}
        return mine, theirs
    _until('the conductor agrees', lambda: operator.eq(*views()), 60, views)
    insts = {i['uuid']: i for i in node.compute.list_instances(host)}
    assert all(i['task'] is None for i in insts.values()), insts
    domains = node.host_domains()
    assert {m.get('uuid') for m in domains.values() if m.get('role') != 'spare'} == set(insts)
    spares = conftest.spare_records(node)
    assert len(spares) == 1, spares
    # A hot spare's paused domain, no other spare's domain
    assert {d for d, m in domains.items() if m.get('role') == 'spare'} == (
        set(spares) if hot else set()), domains
    names = set(os.listdir(node.instances))
    links = _links(node)
    # A resumed hot spare's place: a link to its instance's directory (agent.instancedir).
    assert set(links.values()) <= set(insts), links
    entries = names - set(links)
    assert entries == set(insts) | set(spares), entries
    with_disk = {u for u, i in insts.items() if i['sizes'].get('disk_gb')}
    assert set(node.compute.get_storage(host)['disks']) == with_disk | set(spares)
    resources = node.compute.get_resources(host)
    sizes = [i['sizes'] for i in insts.values()]
    held = 128 if hot else 0                 # a hot spare's memory
    assert resources['reserved'] == {'vcpus': 0, 'memory_mb': held, 'disk_gb': 1}, resources
    assert resources['usage'] == {
        'vcpus': sum(s['vcpus'] for s in sizes),
        'memory_mb': sum(s['memory_mb'] for s in sizes) + held,
        'disk_gb': sum(s.get('disk_gb', 0) for s in sizes) + 1}, resources
    _until('the conductor holds the usage', lambda: (node.conductor.get_node(host) or {})
           .get('generation') == node.compute.get_resources(host)['generation'], 60)
    return insts


def _links(node) -> dict:
    """The links in the node's instances directory: name -> target."""
    return {n: os.readlink(os.path.join(node.instances, n)) for n in os.listdir(node.instances)
            if os.path.islink(os.path.join(node.instances, n))}


def _gone(node, uuid: str) -> None:
    assert uuid not in {i['uuid'] for i in node.compute.list_instances(node.host)}
    assert uuid not in _links(node).values()
    assert uuid not in {m.get('uuid') for m in node.host_domains().values()}
    assert uuid not in os.listdir(node.instances)
    assert uuid not in node.compute.get_storage(node.host)['disks']


# -- scenarios -----------------------------------------------------------------------------
def _spec(node, **extra) -> dict:
    spec = node.spec(disk_gb=1, **extra)
    node.created.add(spec['uuid'])
    return spec


def _booted(node, **extra) -> str:
    spec = _spec(node, **extra)
    assert node.wait_job(node.boot(spec)['job_id'])['state'] == 'done'
    node.wait_ready([spec['uuid']])
    return spec['uuid']


def _finished(node, answer: dict, state: str = 'done') -> dict:
    job = node.wait_job(answer['job_id'], timeout=240)
    assert job['state'] == state, job
    return job


def boot(node, point, **extra):
    spec = _spec(node, **extra)
    uuid = spec['uuid']
    crash = Crash(node, 'agent', point, uuid)
    crash.send(lambda api: api.boot_instance(node.host, spec))
    crash.died()
    _finished(node, crash.again(lambda api: api.boot_instance(node.host, spec)))
    node.wait_ready([uuid])
    consistent(node)
    node.delete([uuid])
    _gone(node, uuid)
    consistent(node)


def warm_boot(node, point):
    consistent(node)         # a saved (hot) spare to take
    boot(node, point, pool='tiny')


def delete(node, point):
    uuid = _booted(node)
    crash = Crash(node, 'agent', point, uuid)
    crash.send(lambda api: api.delete_instance(node.host, uuid))
    crash.died()
    answer = crash.again(lambda api: api.delete_instance(node.host, uuid))
    if answer['job_id'] is not None:
        _finished(node, answer)
    node.wait_states([uuid], ['deleted'])
    _gone(node, uuid)
    consistent(node)


def _power(node, point, uuid, call, power_state):
    crash = Crash(node, 'agent', point, uuid)
    crash.send(call)
    crash.died()
    if crash.answer is not None:
        job = _finished(node, crash.answer)
        assert job['attempts'] == 2, job        # recorded, interrupted, run again
    else:       # the request's answer was lost; its job (recorded) runs on after the restart
        _until('the job ended', lambda: node.compute.get_instance(node.host, uuid)['task']
               is None)
    _until(power_state, lambda: node.compute.get_instance(node.host, uuid)['power_state']
           == power_state)
    if power_state == 'running':
        node.wait_ready([uuid])
    return consistent(node)


def stop(node, point):
    uuid = _booted(node)
    _power(node, point, uuid, lambda api: api.stop_instance(node.host, uuid), 'shutdown')
    node.delete([uuid])


def start(node, point):
    uuid = _booted(node)
    _finished(node, node.compute.stop_instance(node.host, uuid))
    _power(node, point, uuid, lambda api: api.start_instance(node.host, uuid), 'running')
    node.delete([uuid])


def reboot(node, point):
    uuid = _booted(node)
    _power(node, point, uuid, lambda api: api.reboot_instance(node.host, uuid, hard=True),
           'running')
    node.delete([uuid])


def start_up(node, point):
    """The agent dies while it starts; started again, its reports are still newer than any
    the conductor holds (a stop shows there)."""
    uuid = _booted(node)
    Crash(node, 'agent', point, wait=False).died()
    consistent(node)
    _finished(node, node.compute.stop_instance(node.host, uuid))
    _until('the conductor shows the stop', lambda: node.conductor.get_instance(uuid)
           ['power_state'] == 'shutdown')
    consistent(node)
    node.delete([uuid])


def report(node, point):
    """The conductor dies storing the report of a new instance."""
    spec = _spec(node)
    crash = Crash(node, 'conductor', point, spec['uuid'])
    node.boot(spec)
    crash.died()
    node.wait_ready([spec['uuid']])
    consistent(node)
    node.delete([spec['uuid']])


def spare(node, point):
    """A spare made after a warm boot took the pool's one dies at the point; the pool
    refills after the restart."""
    consistent(node)
    spec = _spec(node, pool='tiny')
    crash = Crash(node, 'agent', point)       # any spare: its uuid is the agent's to choose
    _finished(node, node.boot(spec))
    crash.died()
    consistent(node)
    node.delete([spec['uuid']])
    consistent(node)


SCENARIOS = {'boot': boot, 'warm_boot': warm_boot, 'delete': delete, 'stop': stop,
             'start': start, 'reboot': reboot, 'start_up': start_up, 'report': report,
             'spare': spare}


def _points(where: str) -> list[str]:
    return sorted((p for p in CASES if CASES[p][0] == where), key=lambda p: CASES[p][1])


@pytest.mark.parametrize('point', _points('file'))
def test_a_crash_at_the_point_is_recovered_file_storage(point, crash_file_node):
    SCENARIOS[CASES[point][1]](crash_file_node, point)


@pytest.mark.parametrize('point', _points('hot'))
@pytest.mark.both_runtimes
def test_a_crash_at_the_point_is_recovered_hot_spares(point, crash_hot_node):
    SCENARIOS[CASES[point][1]](crash_hot_node, point)


@pytest.mark.parametrize('point', _points('lvm'))
def test_a_crash_at_the_point_is_recovered_lvm_storage(point, crash_lvm_node):
    SCENARIOS[CASES[point][1]](crash_lvm_node, point)
