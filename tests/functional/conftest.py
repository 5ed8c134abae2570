"""Functional fixtures: real libvirtd + QEMU, real RabbitMQ, the agent and conductor as processes.

Prerequisites (tools/setup-node.sh, tools/build-test-guest.sh) are checked and a missing one
FAILS the run: a skipped functional test would hide a break. ``COMPUTE_AGENT_VIRT_TYPE``
(default qemu: TCG) switches every test to kvm where KVM works.
"""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid as uuidlib

import libvirt
import oslo_messaging
import pytest

from agent import conf as agent_conf
from agent import rpc
from agent.conductor import api as conductor_api
from agent.rpc import api as compute_api
from tests.functional import lvm_harness

IMAGES = os.environ.get('COMPUTE_AGENT_IMAGE_DIR', '/var/lib/compute-agent/images')
VIRT_TYPE = os.environ.get('COMPUTE_AGENT_VIRT_TYPE', 'qemu')
# Every agent of the run is started with this [DEFAULT] runtime (tools/run-tests.sh runs a
# subset a second time under threading).
RUNTIME = os.environ.get('COMPUTE_AGENT_RUNTIME', 'eventlet')
if RUNTIME not in ('eventlet', 'threading'):
    raise SystemExit('COMPUTE_AGENT_RUNTIME: eventlet or threading, not %r' % RUNTIME)
URI = 'qemu:///system'
MARKER = 'COMPUTE-AGENT-GUEST-READY'
TEST_GUEST = ('test-vmlinuz', 'test-initrd.img', 'test-vmgenid-vmlinuz', 'test-vmgenid-initrd.img')
GUEST_VERSION = 11      # the test guest these tests rely on (ports, probe, flood, identity answers, vmgenid)
# Broker credentials written by tools/setup-node.sh (TLS to 127.0.0.1:5671, root only): each
# node's own (``node_credentials``: its queues in its own virtual host; it may only report to
# conductors); the control plane's (conductor, these tests' clients) may command nodes.
AGENT_CREDS = '/etc/compute-agent/messaging-agent.conf'
CONTROL_CREDS = '/etc/compute-agent/messaging-control.conf'
AMQPS_PORT = 5671
# The conductor's PostgreSQL (tools/setup-conductor-db.sh): its URL, root only.
DB_URL_FILE = '/etc/compute-agent/conductor-db.url'


def _check_node():
    problems = []
    if os.geteuid() != 0:
        problems.append('functional tests run as root')
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError as exc:
        problems.append('libvirtd not reachable at %s (%s)' % (URI, exc))
    try:
        socket.create_connection(('127.0.0.1', AMQPS_PORT), timeout=2).close()
    except OSError as exc:
        problems.append('RabbitMQ not listening on 127.0.0.1:%d (%s)' % (AMQPS_PORT, exc))
    for path in (AGENT_CREDS, CONTROL_CREDS):
        if not os.path.isfile(path):
            problems.append('broker credentials %s missing' % path)
    for name in TEST_GUEST:
        if not os.path.isfile(os.path.join(IMAGES, name)):
            problems.append('test guest %s missing in %s' % (name, IMAGES))
    try:
        with open(os.path.join(IMAGES, 'test-guest.version')) as f:
            version = int(f.read().strip() or 0)
    except (OSError, ValueError):
        version = 0
    if version < GUEST_VERSION:
        problems.append('test guest in %s older than version %d' % (IMAGES, GUEST_VERSION))
    if problems:
        pytest.fail('node not ready: %s. Run tools/setup-node.sh and tools/build-test-guest.sh.'
                    % '; '.join(problems), pytrace=False)


SETUP_NODE = os.path.join(os.path.dirname(__file__), '..', '..', 'tools', 'setup-node.sh')


def node_credentials(host: str) -> str:
    """Node ``host``'s broker user, virtual host and report key (tools/setup-node.sh --node):
    its credentials file. ``remove_node_credentials`` deletes them."""
    subprocess.run(['bash', SETUP_NODE, '--node', host], check=True, capture_output=True)
    return '/etc/compute-agent/messaging-agent-%s.conf' % host


def remove_node_credentials(host: str) -> None:
    subprocess.run(['bash', SETUP_NODE, '--remove-node', host], check=True,
                   capture_output=True)


def side_by_side(*calls) -> None:
    """Run ``calls`` in threads of their own; raise the first one's error after all ended."""
    errors = []

    def run(call):
        try:
            call()
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _free_port() -> int:
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def qemu_may_enter(path: str) -> None:
    """Let QEMU (uid libvirt-qemu) traverse the test work directory ``path``: pytest makes its
    temporary directories 0700. Search only (o+x), up to the session's base directory; the
    directories above it must let QEMU through already (tox gives the functional tests
    /var/tmp/compute-agent-functional)."""
    path = os.path.realpath(path)
    top = os.path.realpath(str(_basetemp))
    assert path == top or path.startswith(top + os.sep), (path, top)
    while True:
        mode = os.stat(path).st_mode
        if not mode & 0o001:
            os.chmod(path, (mode & 0o7777) | 0o001)
        if path == top:
            break
        path = os.path.dirname(path)
    while path != '/':
        path = os.path.dirname(path)
        assert os.stat(path).st_mode & 0o001, (
            '%s: QEMU cannot traverse it to the tests\' images; run the functional tests with '
            '--basetemp under a directory it can (tox does: /var/tmp)' % path)


_basetemp = None


@pytest.fixture(scope='session', autouse=True)
def _session_basetemp(tmp_path_factory):
    """The session's base directory (autouse: set before any node is made)."""
    global _basetemp
    _basetemp = tmp_path_factory.getbasetemp()


class Node:
    """The running agent + conductor, their RPC clients, and direct libvirt access."""

    def __init__(self, workdir, vg: 'lvm_harness.LoopVolumeGroup | None' = None,
                 extra_config: str = '', agent_env: dict | None = None,
                 conductor_db: str | None = None):
        self.workdir = workdir
        qemu_may_enter(workdir)
        # The conductor's store: a SQLite file (the embedded default) or a database URL.
        self.conductor_db = conductor_db or os.path.join(workdir, 'conductor.sqlite')
        self.agent_env = dict(agent_env or {})
        self.conductor_env: dict = {}
        self.vg = vg
        self.host = 'ftest-%s' % uuidlib.uuid4().hex[:8]
        self.agent_creds = node_credentials(self.host)
        self.bridge = 'cabr' + self.host[-8:]      # the one bridge this node offers guests
        self.topic = 'conductor-' + self.host
        self.image_dir = os.path.join(workdir, 'images')
        self.instances = os.path.join(workdir, 'instances')
        self.image_cache = os.path.join(workdir, 'image-cache')
        os.makedirs(self.image_dir)
        for name in TEST_GUEST:
            shutil.copy(os.path.join(IMAGES, name), self.image_dir)
        with open(os.path.join(self.image_dir, 'bogus-kernel'), 'wb') as f:
            # QEMU refuses it on every run ("invalid kernel header": its setup size, byte
            # 0x1f1, says 128 KiB in a 4 KiB file), so the create fails. Random bytes did not:
            # when that byte happened to be below 8 (1 run in 32) QEMU started the garbage.
            f.write(b'\xff' * 4096)
        with open(os.path.join(self.image_dir, 'test-disk.raw'), 'wb') as f:
            f.truncate(1024 * 1024)
        self.config = os.path.join(workdir, 'agent.conf')
        self.trace_path = os.path.join(workdir, 'trace.json')
        self.metrics_port = _free_port()
        storage = '[storage]\nbackend = file\n'
        if vg is not None:
            storage = ('[storage]\nbackend = lvm\n[lvm]\nvolume_group = %s\nlvm_system_dir = %s\n'
                       'report_cache_seconds = 0.5\n' % (vg.name, vg.system_dir))
        with open(self.config, 'w') as f:
            f.write('[DEFAULT]\nhost = %s\nruntime = %s\n'
                    'image_dir = %s\ninstances_path = %s\ndebug = true\n'
                    '[libvirt]\nvirt_type = %s\nconnection_uri = %s\n'
                    '[conductor]\ntopic = %s\n[jobs]\njournal = %s\n'
                    '[trace]\npath = %s\n[metrics]\nport = %d\n'
                    '[network]\nallow_user_nics = true\nbridges = %s\n'
                    '[images]\ncache_dir = %s\n%s'
                    % (self.host, RUNTIME, self.image_dir, self.instances, VIRT_TYPE, URI,
                       self.topic,
                       os.path.join(workdir, 'jobs.sqlite'), self.trace_path, self.metrics_port,
                       self.bridge, self.image_cache, storage))
            f.write(extra_config)
        # The database (its URL may hold a password) only in the conductor's own file.
        self.conductor_config = os.path.join(workdir, 'conductor.conf')
        with open(os.open(self.conductor_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                  'w') as f:
            f.write('[conductor]\ndatabase = %s\n' % self.conductor_db)
        self.procs = {}
        self.created: set[str] = set()
        agent_conf.CONF(['--config-file', self.config, '--config-file', CONTROL_CREDS],
                        project='compute-agent-ftest', default_config_files=[])
        self.transport = rpc.get_transport(agent_conf.CONF)      # the fleet's virtual host
        self.nodes = rpc.NodeTransports(agent_conf.CONF)          # each node's own
        self.compute = compute_api.ComputeAPI(self.nodes, timeout=30)
        self.conductor = conductor_api.ConductorAPI(self.transport, self.topic, timeout=30)

    def report_key(self) -> bytes:
        """This node's report key (the conductor's copy)."""
        from agent import signing
        with open('/etc/compute-agent/node-keys/%s.key' % self.host) as f:
            return signing.parse_key(f.read())

    # -- processes --------------------------------------------------------------------------
    def start(self, name: str) -> None:
        self.launch(name)
        if name == 'agent':
            self.wait_agent()
        else:
            self.wait_conductor()

    def launch(self, name: str) -> subprocess.Popen:
        """Start the agent or the conductor; not waiting for it to answer."""
        module = {'agent': 'agent.cmd.agent', 'conductor': 'agent.cmd.conductor'}[name]
        log = open(os.path.join(self.workdir, name + '.log'), 'ab')
        env = dict(os.environ, **(self.vg.env if self.vg and name == 'agent' else {}),
                   **(self.agent_env if name == 'agent' else self.conductor_env))
        files = [self.config, self.agent_creds] if name == 'agent' else [
            self.config, self.conductor_config, CONTROL_CREDS]
        self.procs[name] = subprocess.Popen(
            [sys.executable, '-m', module] + [a for f in files for a in ('--config-file', f)],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        return self.procs[name]

    def wait_conductor(self, timeout: float = 60.0) -> None:
        """Until the conductor answers (its queue exists: an agent's first report is not
        lost to a queue nobody declared yet)."""
        probe = conductor_api.ConductorAPI(self.transport, self.topic, timeout=2)
        deadline = time.monotonic() + timeout
        while True:
            if self.procs['conductor'].poll() is not None:
                raise AssertionError('conductor exited: %s' % self.log_tail('conductor'))
            try:
                probe.list_instances('nobody')
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError('conductor did not answer: %s'
                                         % self.log_tail('conductor'))

    def wait_agent(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.procs['agent'].poll() is not None:
                raise AssertionError('agent exited: %s' % self.log_tail('agent'))
            try:
                self.compute.ping(self.host, timeout=2)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError('agent did not answer: %s' % self.log_tail('agent'))

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self, name: str) -> None:
        """kill -9: no clean stop, nothing flushed."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()

    def log_tail(self, name: str, lines: int = 30) -> str:
        with open(os.path.join(self.workdir, name + '.log'), errors='replace') as f:
            return ''.join(f.readlines()[-lines:])

    # -- helpers ----------------------------------------------------------------------------
    def spec(self, **extra) -> dict:
        spec = {'uuid': str(uuidlib.uuid4()), 'vcpus': 1, 'memory_mb': 128,
                'kernel': 'test-vmlinuz', 'initrd': 'test-initrd.img',
                'cmdline': 'console=ttyS0 quiet no_timer_check'}
        spec.update(extra)
        return spec

    def boot(self, spec: dict) -> dict:
        self.created.add(spec['uuid'])
        return self.compute.boot_instance(self.host, spec)

    def wait_states(self, uuids, states, timeout: float = 180.0) -> dict:
        rows = self.conductor.wait_instances(list(uuids), list(states), timeout)
        bad = {u: r and (r['vm_state'], r['fault']) for u, r in rows.items()
               if not r or r['vm_state'] not in states}
        assert not bad, 'not %s in time: %s' % ('/'.join(states), bad)
        return rows

    def wait_ready(self, uuids, timeout: float = 300.0) -> dict:
        """The conductor's rows once every instance is active and its guest ready."""
        rows = self.conductor.wait_instances(list(uuids), ['active'], timeout, ready=True)
        bad = {u: r and (r['vm_state'], r['readiness']) for u, r in rows.items()
               if not r or r['readiness'] != 'ready'}
        assert not bad, 'not ready in time: %s' % bad
        return rows

    def wait_job(self, job_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.compute.get_job(self.host, job_id)
            if job['state'] in ('done', 'failed') or time.monotonic() > deadline:
                return job
            time.sleep(0.1)

    def console(self, uuid: str) -> str:
        try:
            with open(os.path.join(self.instances, uuid, 'console.log'), errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def wait_console(self, uuid: str, text: str, count: int = 1,
                     timeout: float = 120.0) -> str:
        """The console once ``text`` is on it ``count`` times. A guest's serial output
        reaches the log through virtlogd on its own schedule, after any event the guest
        caused next (its agent port, its power-off): wait for it, never assume it."""
        deadline = time.monotonic() + timeout
        while self.console(uuid).count(text) < count:
            assert time.monotonic() < deadline, 'not %d x %r on the console of %s: %r' % (
                count, text, uuid, self.console(uuid)[-500:])
            time.sleep(0.2)
        return self.console(uuid)

    def domains(self, running: bool = False) -> set[str]:
        """uuids of the libvirt domains this test run created, or of those running (a fresh
        connection each time: tests restart libvirtd)."""
        conn = libvirt.open(URI)
        try:
            flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if running else 0
            return {d.UUIDString() for d in conn.listAllDomains(flags)
                    if d.UUIDString() in self.created}
        finally:
            conn.close()

    def delete(self, uuids) -> None:
        for u in uuids:
            self.compute.delete_instance(self.host, u)
        self.wait_states(uuids, ['deleted'], timeout=120)

    def metrics(self) -> str:
        """The agent's Prometheus exposition text."""
        url = 'http://127.0.0.1:%d/metrics' % self.metrics_port
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.read().decode()

    def libvirt_calls(self) -> int:
        return self.compute.get_stats(self.host)['driver']['libvirt_calls_total']

    def remove_leftovers(self, uuids: set[str]) -> list[str]:
        """Delete those of these instances the agent (or libvirt) still holds, through the
        agent while it runs; return the ones that were still there."""
        held: set[str] = set()
        agent = self.procs.get('agent')
        if agent is not None and agent.poll() is None:
            try:
                held = {i['uuid'] for i in self.compute.list_instances(self.host)} & uuids
                if held:
                    self.delete(sorted(held))
            except Exception as exc:      # the agent is broken: libvirt below still cleans
                print('removing leftovers %s through the agent failed: %s' % (held, exc))
        domains = self.domains() & uuids
        # warm instances: domains under their spares' uuids whose metadata names them
        domains |= {d for d, meta in self.host_domains(spares=False).items()
                    if meta.get('uuid') in uuids}
        self._remove_domains(domains)
        return sorted(held | domains)

    @staticmethod
    def _remove_domains(uuids) -> None:
        """Destroy and undefine these domains straight in libvirt (no agent involved)."""
        if not uuids:
            return
        conn = libvirt.open(URI)
        try:
            for uuid in uuids:
                try:
                    dom = conn.lookupByUUIDString(uuid)
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
                except libvirt.libvirtError as exc:   # gone meanwhile, or stuck: said
                    print('removing leftover domain %s: %s' % (uuid, exc))
        finally:
            conn.close()

    def host_domains(self, spares: bool = True) -> dict[str, dict]:
        """libvirt uuid -> metadata of every domain whose metadata names this node (warm
        instances and spares run under their own libvirt uuids); ``spares``: with spares."""
        from agent.virt.libvirt import config as vconfig
        conn = libvirt.open(URI)
        try:
            out = {}
            for dom in conn.listAllDomains(0):
                try:
                    meta = vconfig.parse_metadata(dom.XMLDesc(0)) or {}
                except libvirt.libvirtError:      # gone meanwhile
                    continue
                if meta.get('host') == self.host and (spares or meta.get('role') != 'spare'):
                    out[dom.UUIDString()] = meta
            return out
        finally:
            conn.close()

    def cleanup(self) -> None:
        """Safety net for failed tests: remove any domain this run created (or that names
        this node in its metadata)."""
        self._remove_domains(self.domains() | set(self.host_domains()))
        # Side by side: closing an idle transport waits for its listeners' polls (seconds),
        # each rabbitmqctl takes about one.
        side_by_side(self.transport.cleanup, self.nodes.cleanup, self._delete_queues)
        remove_node_credentials(self.host)        # its virtual host and queues with it

    def _delete_queues(self) -> None:
        """This node's conductor's queues in the fleet's virtual host (report and control
        topics, their server queues), which outlive their consumers; reply and fanout queues
        expire on their own (oslo.messaging's 30-minute TTL). The deletes run side by side:
        each rabbitmqctl costs about a second."""
        listed = subprocess.run(['rabbitmqctl', '-q', 'list_queues', 'name'],
                                capture_output=True, text=True)
        ours = [q for q in listed.stdout.split()
                if q == self.topic or q.startswith(self.topic + '.')
                or q.startswith(self.topic + '_control')]
        deletes = [subprocess.Popen(['rabbitmqctl', '-q', 'delete_queue', q],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for q in ours]
        for proc in deletes:
            proc.wait()


def spare_records(node: Node, state: str | None = None) -> dict:
    """Spare records on the node's disk: directory uuid -> record (of one state)."""
    out = {}
    for name in os.listdir(node.instances):
        try:
            with open(os.path.join(node.instances, name, 'spare.json')) as f:
                record = json.load(f)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            continue
        if state is None or record.get('state') == state:
            out[name] = record
    return out


NODE_FIXTURES = ('node', 'lvm_node', 'acct_node', 'fault_node', 'life_node', 'rpc_node',
                 'ready_node', 'warm_node', 'warm_lvm_node', 'hot_node', 'crash_file_node',
                 'crash_hot_node', 'crash_lvm_node', 'real_node', 'store_node')


def stop_libvirtd(pause: float = 0.0) -> None:
    """SIGTERM to libvirtd (it drops every client at once), wait for it to exit, then
    ``pause`` seconds. (SIGKILL in the middle of a domain start left libvirt 9.0 here with
    that domain stuck in a "start" job that no restart frees: beyond any client's reach.)"""
    settle_teardowns()                 # no node is being torn down through it
    with open('/run/libvirtd.pid') as f:
        pid = int(f.read().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while os.path.exists('/proc/%d' % pid):
        assert time.monotonic() < deadline, 'libvirtd did not exit'
        time.sleep(0.05)
    time.sleep(pause)


def start_libvirtd() -> None:
    """Start libvirtd again (daemonised, as tools/setup-node.sh does)."""
    subprocess.run(['/usr/sbin/libvirtd', '-d'], check=True)


@pytest.fixture(autouse=True)
def leaves_no_instances(request):
    """After each test the instances it booted are gone. What a failed test left is deleted
    (so it cannot fail the tests after it on the shared node); a test that left some
    errors here."""
    nodes = [request.getfixturevalue(name) for name in NODE_FIXTURES
             if name in request.fixturenames]
    before = [set(n.created) for n in nodes]
    yield
    left = {}
    for n, old in zip(nodes, before):
        still = n.remove_leftovers(n.created - old)
        if still:
            left[n.host] = still
    assert not left, 'instances left behind (now removed): %s' % left


def calls_through_restart(node: Node, name: str, call, callers: int) -> tuple[int, list]:
    """``callers`` threads repeat ``call(i)`` for 1.5 s, while ``name`` (agent or conductor)
    is stopped (SIGTERM: each caller has a call in flight) and started, and 1.5 s more;
    (calls answered, MessagingTimeout texts)."""
    import threading
    answered = [0] * callers             # per caller: no shared counter between threads
    timeouts = []
    stop = threading.Event()

    def caller(i):
        while not stop.is_set():
            try:
                call(i)
                answered[i] += 1
            except oslo_messaging.MessagingTimeout as exc:
                timeouts.append(str(exc))
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        node.stop(name)
        node.start(name)
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return sum(answered), timeouts


def pg_admin_url() -> str:
    """The URL of the conductor's PostgreSQL role (may create databases); fails the run when
    tools/setup-conductor-db.sh has not run."""
    try:
        with open(DB_URL_FILE) as f:
            url = f.read().strip()
    except OSError as exc:
        pytest.fail('no conductor database (%s). Run tools/setup-conductor-db.sh.' % exc,
                    pytrace=False)
    import sqlalchemy as sa
    try:
        sa.create_engine(url).connect().close()
    except sa.exc.OperationalError as exc:
        pytest.fail('PostgreSQL not reachable: %s. Run tools/setup-conductor-db.sh.'
                    % str(exc).splitlines()[0], pytrace=False)
    return url


def _pg_create():
    """A fresh PostgreSQL database: (its URL, a callable that drops it, connections and all)."""
    import sqlalchemy as sa
    admin = pg_admin_url()
    name = 'ftest_%s' % uuidlib.uuid4().hex[:12]
    # No pooled connection: a test may restart PostgreSQL under it.
    engine = sa.create_engine(admin, isolation_level='AUTOCOMMIT', poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        conn.exec_driver_sql('CREATE DATABASE %s' % name)

    def drop():
        with engine.connect() as conn:
            conn.exec_driver_sql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % name)
        engine.dispose()
    return admin.rsplit('/', 1)[0] + '/' + name, drop


@contextlib.contextmanager
def _pg_database():
    """A fresh PostgreSQL database (dropped afterwards): its URL."""
    url, drop = _pg_create()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test."""
    with _pg_database() as url:
        yield url


_teardowns: list[threading.Thread] = []
_teardown_errors: list[BaseException] = []


def _run_node(n: Node, after=None, background: bool = True):
    """Start the node's conductor and agent, yield the node; then stop both, clean up,
    destroy its VG and call ``after()``. In the background (``background``): a node's stop is
    mostly waiting (an idle RPC listener notices its stop only when its poll returns, up to
    5 s), which the next tests need not sit through; ``settle_teardowns`` waits for them
    (before a test stops a shared service, and at the session's end)."""
    try:
        n.start('conductor')
        n.start('agent')
        yield n
    finally:
        def down():
            try:
                n.stop('agent')
                n.stop('conductor')
                n.cleanup()
            except BaseException as exc:
                _teardown_errors.append(exc)
            finally:
                try:
                    if n.vg is not None:
                        n.vg.destroy()
                    if after is not None:
                        after()
                except BaseException as exc:
                    _teardown_errors.append(exc)
        if background:
            thread = threading.Thread(target=down, name='teardown-' + n.host)
            thread.start()
            _teardowns.append(thread)
        else:
            down()
            settle_teardowns()


def settle_teardowns() -> None:
    """Wait for the nodes being torn down; raise the first error one of them met."""
    while _teardowns:
        _teardowns.pop().join()
    if _teardown_errors:
        raise _teardown_errors.pop(0)


@pytest.fixture(scope='session', autouse=True)
def _settled_at_the_end():
    """Torn down last (autouse, session): every node's teardown has ended."""
    yield
    settle_teardowns()


def run_node_on_vg(workdir: str, vg, **kw):
    """A node on its own VG (destroyed once the node is torn down, or now if the node
    cannot even be made)."""
    try:
        n = Node(workdir, vg, **kw)
    except BaseException:
        vg.destroy()
        raise
    yield from _run_node(n)


@pytest.fixture(scope='session')
def node(tmp_path_factory):
    """An agent with the file storage backend; its conductor on PostgreSQL (the fleet's
    store). The other nodes' conductors use SQLite (the embedded default), so the conductor
    tests run against both."""
    _check_node()
    url, drop = _pg_create()
    try:
        n = Node(str(tmp_path_factory.mktemp('node')), conductor_db=url)
    except BaseException:
        drop()
        raise
    yield from _run_node(n, after=drop)      # dropped once its conductor has stopped


@pytest.fixture(scope='session')
def lvm_node(tmp_path_factory):
    """An agent with the LVM backend on a private loop-backed VG behind counting wrappers."""
    _check_node()
    workdir = str(tmp_path_factory.mktemp('lvmnode'))
    # No periodic audit here: tests of this node count lvs launches exactly. The periodic
    # audit has its own node in test_resources.py.
    yield from run_node_on_vg(workdir, lvm_harness.LoopVolumeGroup(workdir),
                              extra_config='[resources]\naudit_interval = 0\n')
