#!/usr/bin/env python3
"""Fleet simulation: K agent processes (each its own node, on a private libvirt test driver
hosted in libvirtd: every libvirt call crosses libvirtd's socket, no QEMU runs) reporting to
one RabbitMQ and one conductor of W worker processes on PostgreSQL (or SQLite).

Run it through tools/bench-fleet.sh (node set-up, PostgreSQL, venv, then this). For each W in
``--workers``: a fresh database and conductor; then every node gets a storm of M
``boot_instance`` at once, node after node at ``--node-rate`` nodes per second (0: all K
nodes at the same time), the conductor is waited for until every instance is active, then
every instance is deleted the same way. Why node after node: K agents share this machine's
cores, where in a fleet each has its own; K storms at once stretch every node's storm over
the whole machine's (see docs/benchmarks.md, "Fleet simulation"). Measured per W:

- lag: each instance's ACTIVE time in its agent (``active_at``, the agent's event time) to
  when the conductor first stored it (``active_seen_at``): p50, p99, max; and its parts:
  in the agent (to the ``sent_at`` of the report that carried it) and sent to stored;
- conductor messages per boot (reports received during the boot phase / K * M) and during the
  delete phase; reports per second the conductor applied during the busiest second, and
  (``--saturate``) the reports per second it sustains when clients send back to back;
- CPU seconds per process kind (agents summed, conductor processes, RabbitMQ, PostgreSQL,
  libvirtd) over each phase, and per message;
- the database's size; and whether every instance's final state in the conductor equals its
  agent's (after the boots and after the deletes).

``--restart-conductor`` and ``--restart-db`` restart the conductor (all its workers) and the
database in the middle of the boots. Output: a table, and the JSON and its plot in
``docs/bench/`` (``fleet-kK-mM-SHAPE.json`` and ``.png``; ``--out`` elsewhere); the agents'
and the conductor's logs stay in ``--workdir``. ``--from-json`` re-tabulates and re-plots an
earlier JSON.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_boot_storm as bs  # noqa: E402
from agent import conf as agent_conf  # noqa: E402
from agent import rpc  # noqa: E402
from agent.conductor import api as conductor_api  # noqa: E402
from agent.rpc import api as compute_api  # noqa: E402

KEYS_DIR = '/etc/compute-agent/node-keys'


def node_credentials(host: str) -> str:
    """Node ``host``'s broker user and report key (tools/setup-node.sh --node, about 3 s;
    kept across runs): its credentials file."""
    path = '/etc/compute-agent/messaging-agent-%s.conf' % host
    if not os.path.exists(path):
        subprocess.run([os.path.join(TOP, 'tools', 'setup-node.sh'), '--node', host],
                       check=True, stdout=subprocess.DEVNULL)
    return path


def report_key(host: str) -> bytes:
    """A report key for a simulated sender with no broker user (it sends with the control
    plane's): made once, as tools/setup-node.sh makes one."""
    from agent import signing
    path = os.path.join(KEYS_DIR, host + '.key')
    if not os.path.exists(path):
        os.makedirs(KEYS_DIR, mode=0o700, exist_ok=True)
        with open(os.open(path + '.new', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                  'w') as f:
            f.write(os.urandom(signing.KEY_BYTES).hex() + '\n')
        os.replace(path + '.new', path)
    with open(path) as f:
        return signing.parse_key(f.read())


CONTROL_CREDS = '/etc/compute-agent/messaging-control.conf'
DB_URL_FILE = '/etc/compute-agent/conductor-db.url'
DB_NAME = 'compute_fleet_bench'
# A node of the test driver: 64 CPUs, 64 GiB; the agent's capacity is the driver's.
NODE_XML = ('<node><cpu><mhz>2000</mhz><model>i686</model><active>64</active><nodes>1</nodes>'
            '<sockets>1</sockets><cores>64</cores><threads>1</threads></cpu>'
            '<memory>67108864</memory></node>\n')


# -- CPU per process kind ---------------------------------------------------------------------
def _kind(pid: str) -> str | None:
    try:
        with open('/proc/%s/cmdline' % pid, 'rb') as f:
            cmd = f.read().replace(b'\0', b' ').decode('utf-8', 'replace')
        with open('/proc/%s/comm' % pid) as f:
            comm = f.read().strip()
    except OSError:
        return None
    if 'agent.cmd.agent' in cmd:
        return 'agents'
    if 'agent.cmd.conductor' in cmd:
        return 'conductor'
    if comm == 'beam.smp':
        return 'rabbitmq'
    if comm == 'postgres' or comm.startswith('postgres'):
        return 'database'
    if comm == 'libvirtd':
        return 'libvirtd'
    return None


def cpu_sample() -> dict:
    """(kind, pid) -> CPU seconds so far, for the processes this simulation measures."""
    out = {}
    tick = os.sysconf('SC_CLK_TCK')
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        kind = _kind(pid)
        if kind is None:
            continue
        try:
            with open('/proc/%s/stat' % pid) as f:
                fields = f.read().rpartition(')')[2].split()
        except OSError:
            continue
        out[(kind, pid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_since(before: dict) -> dict:
    total: dict = {}
    for (kind, pid), cpu in cpu_sample().items():
        total[kind] = total.get(kind, 0.0) + cpu - before.get((kind, pid), 0.0)
    return {k: round(v, 2) for k, v in total.items()}


# -- the processes ----------------------------------------------------------------------------
class Fleet:
    def __init__(self, args, progress: 'bs.Progress'):
        self.args = args
        self.progress = progress
        self.workdir = args.workdir
        self.python = os.path.join(args.venv, 'bin', 'python')
        self.topic = 'conductor-fleet'
        self.hosts = ['fleet-%03d' % i for i in range(args.nodes)]
        self.agents: dict[str, subprocess.Popen] = {}
        self.conductor: subprocess.Popen | None = None
        self.db_url = None
        self._store = None
        self.common = os.path.join(self.workdir, 'common.conf')
        with open(self.common, 'w') as f:
            f.write('[DEFAULT]\nimage_dir = %s\n[conductor]\ntopic = %s\n'
                    '[storage]\nbackend = file\n[readiness]\nexpect_within = 0\n'
                    '[resources]\naudit_interval = 0\ncpu_allocation_ratio = 64\n'
                    '[workqueue]\nthreads = %d\nreserved_threads = 1\n'
                    % (args.image_dir, self.topic, args.agent_threads))
        agent_conf.CONF(['--config-file', self.common, '--config-file', CONTROL_CREDS],
                        project='compute-agent-fleet', default_config_files=[])
        self.transport = rpc.get_transport(agent_conf.CONF)
        self.nodes = rpc.NodeTransports(agent_conf.CONF)
        self.compute = compute_api.ComputeAPI(self.nodes, timeout=300)
        self.conductor_api = conductor_api.ConductorAPI(self.transport, self.topic, timeout=300)
        self.probe = conductor_api.ConductorAPI(self.transport, self.topic, timeout=2)

    # databases
    def fresh_database(self) -> str:
        self.close_store()
        if self.args.database == 'sqlite':
            path = os.path.join(self.workdir, 'conductor.sqlite')
            for suffix in ('', '-wal', '-shm', '.migrate-lock'):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
            self.db_url = 'sqlite:///' + path
            return self.db_url
        import sqlalchemy as sa
        with open(DB_URL_FILE) as f:
            admin = f.read().strip()
        engine = sa.create_engine(admin, isolation_level='AUTOCOMMIT')
        with engine.connect() as conn:
            conn.exec_driver_sql('DROP DATABASE IF EXISTS %s WITH (FORCE)' % DB_NAME)
            conn.exec_driver_sql('CREATE DATABASE %s' % DB_NAME)
        engine.dispose()
        self.db_url = admin.rsplit('/', 1)[0] + '/' + DB_NAME
        return self.db_url

    def store(self):
        """The run's database, read directly (opened once per database)."""
        from agent.conductor import db
        if self._store is None or self._store.url != self.db_url:
            self.close_store()
            self._store = db.InstanceStore(self.db_url)
        return self._store

    def close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # conductor
    def start_conductor(self, workers: int) -> None:
        conf = os.path.join(self.workdir, 'conductor.conf')
        # The database URL holds the role's password: the file is root's alone.
        with open(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as f:
            f.write('[DEFAULT]\nhost = fleet-conductor\n[conductor]\ndatabase = %s\n'
                    'workers = %d\n' % (self.db_url, workers))
        log = open(os.path.join(self.workdir, 'conductor.log'), 'ab')
        self.conductor = subprocess.Popen(
            [self.python, '-m', 'agent.cmd.conductor', '--config-file', self.common,
             '--config-file', conf, '--config-file', CONTROL_CREDS],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.probe.list_instances('nobody')
                return
            except Exception:
                if self.conductor.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit('the conductor did not start; see %s/conductor.log'
                                     % self.workdir)
                time.sleep(0.2)

    def stop_conductor(self) -> None:
        if self.conductor is not None and self.conductor.poll() is None:
            self.conductor.send_signal(signal.SIGTERM)
            try:
                self.conductor.wait(60)
            except subprocess.TimeoutExpired:
                self.conductor.kill()
                self.conductor.wait()
        self.conductor = None

    # agents
    def start_agents(self) -> None:
        nodes = os.path.join(self.workdir, 'nodes')
        shutil.rmtree(nodes, ignore_errors=True)
        os.makedirs(nodes)
        for host in self.hosts:
            d = os.path.join(nodes, host)
            os.makedirs(d)
            with open(os.path.join(d, 'node.xml'), 'w') as f:
                f.write(NODE_XML)
            conf = os.path.join(d, 'agent.conf')
            with open(conf, 'w') as f:
                f.write('[DEFAULT]\nhost = %s\ninstances_path = %s\n'
                        '[libvirt]\nvirt_type = test\nconnection_uri = test+unix://%s\n'
                        '[jobs]\njournal = %s\n'
                        % (host, os.path.join(d, 'instances'), os.path.join(d, 'node.xml'),
                           os.path.join(d, 'jobs.sqlite')))
            log = open(os.path.join(d, 'agent.log'), 'ab')
            self.agents[host] = subprocess.Popen(
                [self.python, '-m', 'agent.cmd.agent', '--config-file', self.common,
                 '--config-file', conf, '--config-file', node_credentials(host)],
                stdout=log, stderr=subprocess.STDOUT)
        waiting = set(self.hosts)
        deadline = time.monotonic() + 120 + 3 * len(self.hosts)
        while waiting:
            for host in sorted(waiting):
                if self.agents[host].poll() is not None:
                    raise SystemExit('agent %s exited; see %s/nodes/%s/agent.log'
                                     % (host, self.workdir, host))
                try:
                    self.compute.ping(host, timeout=1)
                    waiting.discard(host)
                except Exception:
                    pass
            if time.monotonic() > deadline:
                raise SystemExit('agents not answering: %s' % sorted(waiting)[:5])
            self.progress.show('agents serving: %d/%d' % (len(self.hosts) - len(waiting),
                                                          len(self.hosts)))

    def wait_nodes_reported(self, timeout: float = 300.0) -> None:
        """Until every node's start-up usage report is in the conductor."""
        waiting = set(self.hosts)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            waiting = {h for h in waiting if self.conductor_api.get_node(h) is None}
            self.progress.show('nodes reported: %d/%d' % (len(self.hosts) - len(waiting),
                                                          len(self.hosts)))
            time.sleep(0.5)
        if waiting:
            raise SystemExit('nodes never reported: %s' % sorted(waiting)[:5])

    def stop_agents(self) -> None:
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.agents.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.agents = {}

    def close(self) -> None:
        self.close_store()
        self.stop_agents()
        self.stop_conductor()
        self.nodes.cleanup()
        self.transport.cleanup()


def restart_database() -> None:
    cluster = subprocess.run(['pg_lsclusters', '-h'], check=True, capture_output=True,
                             text=True).stdout.split()
    subprocess.run(['pg_ctlcluster', cluster[0], cluster[1], 'restart', '-m', 'fast'],
                   check=True, capture_output=True)


# -- one run ----------------------------------------------------------------------------------
def _storm(fleet: Fleet, calls: list, threads: int, at=None) -> dict:
    """Send every (fn, host, arg, uuid) from ``threads`` clients, each no sooner than its
    ``at(index, host)`` seconds from now (None: all at once); uuid -> error of the refused."""
    errors = {}
    start = time.monotonic()

    def one(item):
        index, (fn, host, arg, uuid) = item
        if at is not None:
            time.sleep(max(0.0, start + at(index, host) - time.monotonic()))
        try:
            fn(host, arg)
        except Exception as exc:
            errors[uuid] = str(exc)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, enumerate(calls)))
    return errors


def _schedule(fleet: Fleet, args):
    """The calls' order and start times: ``--rate``: boots one by one across the fleet;
    ``--node-rate``: node after node, each node's M at once; else everything at once (round
    robin over the nodes)."""
    if args.rate:
        return 'round_robin', (lambda index, host: index / args.rate)
    if args.node_rate:
        slot = {h: i / args.node_rate for i, h in enumerate(fleet.hosts)}
        return 'by_node', (lambda index, host: slot[host])
    return 'round_robin', None


def _ordered(order: str, items: dict) -> list:
    """host -> [x]: host after host (by_node) or round robin over the hosts."""
    if order == 'by_node':
        return [(h, x) for h, xs in items.items() for x in xs]
    most = max((len(xs) for xs in items.values()), default=0)
    return [(h, xs[i]) for i in range(most) for h, xs in items.items() if i < len(xs)]


def _wait_conductor(fleet: Fleet, by_host: dict, states: list, deadline: float) -> dict:
    """uuid -> the conductor's row once every instance is in ``states`` (or the deadline)."""
    rows = {}
    left = {h: list(u) for h, u in by_host.items()}
    while left and time.monotonic() < deadline:
        for host in list(left):
            got = fleet.conductor_api.wait_instances(left[host], states, 0)
            for uuid, row in got.items():
                if row is not None and row['vm_state'] in states:
                    rows[uuid] = row
            left[host] = [u for u in left[host] if u not in rows]
            if not left[host]:
                del left[host]
        fleet.progress.show('conductor: %d/%d %s' % (
            len(rows), sum(len(u) for u in by_host.values()), '/'.join(states)))
        time.sleep(0.5)
    return rows


def _agree(fleet: Fleet, by_host: dict) -> dict:
    """Compare every instance's state in its agent with its row in the conductor."""
    differ = []
    checked = 0
    rows = {r['uuid']: r for r in fleet.conductor_api.list_instances()}
    for host, uuids in by_host.items():
        agent = {i['uuid']: i for i in fleet.compute.list_instances(host)}
        for uuid in uuids:
            a, c = agent.get(uuid), rows.get(uuid)
            a_state = a['vm_state'] if a else 'deleted'
            c_state = c['vm_state'] if c else None
            checked += 1
            if a_state != c_state or (a and c and a['power_state'] != c['power_state']):
                differ.append((host, uuid, a_state, c_state))
    return {'checked': checked, 'differ': len(differ), 'examples': differ[:5]}


def _reports_during(fleet: Fleet, t0: float, t1: float) -> dict:
    """Reports the conductor received between wall times t0 and t1: count, busiest second."""
    import sqlalchemy as sa
    with fleet.store().engine.connect() as conn:
        times = [r[0] for r in conn.execute(sa.text(
            'SELECT received_at FROM reports WHERE received_at BETWEEN :a AND :b'),
            {'a': t0, 'b': t1})]
    per_second: dict = {}
    for t in times:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    return {'count': len(times), 'busiest_second': max(per_second.values(), default=0),
            'span_s': round(max(times) - min(times), 2) if times else 0.0}


def _spread(values: list) -> dict:
    """p50, p99, max and count of some durations (seconds)."""
    return {'p50': bs.pct(values, 0.5), 'p99': bs.pct(values, 0.99),
            'max': max(values, default=None), 'n': len(values)}


def _lag_parts(fleet: Fleet, rows: dict) -> dict:
    """Where each instance's lag went: in its agent (ACTIVE to the report that carried it
    leaving: the report window, a report still in flight, the agent waiting for CPU) and
    after (sent to stored: RabbitMQ, the conductor's queue, the transaction). The report
    that carried an instance's ACTIVE is the one its row was stored with (same host and
    ``received_at``)."""
    import sqlalchemy as sa
    with fleet.store().engine.connect() as conn:
        sent = {(h, r): s for h, r, s in conn.execute(sa.text(
            'SELECT host, received_at, sent_at FROM reports WHERE sent_at IS NOT NULL'))}
    agent, after = [], []
    for row in rows.values():
        s = sent.get((row['host'], row.get('active_seen_at')))
        if s is not None and row.get('active_at'):
            agent.append(s - row['active_at'])
            after.append(row['active_seen_at'] - s)
    return {'in_agent': _spread(agent), 'sent_to_stored': _spread(after)}


def saturate(fleet: Fleet, seconds: float, threads: int) -> dict:
    """The reports per second the conductor sustains: ``threads`` clients send reports (5
    instance states of their own fake node each, usage every fifth) back to back for
    ``seconds``; the answered calls per second and their latency. The clients share this
    machine with the conductor: a lower bound."""
    done, latency = [], []
    stop = time.monotonic() + seconds

    def client(i):
        host = 'saturate-%03d' % i
        # Signed as that node, sent with the control plane's broker user (no node behind it).
        reports = conductor_api.ReportAPI(fleet.transport, fleet.topic, report_key(host),
                                          timeout=300)
        uuids = [str(uuidlib.uuid4()) for _ in range(5)]
        n = 0
        while time.monotonic() < stop:
            seq = time.time_ns()
            states = [{'uuid': u, 'seq': seq, 'vm_state': 'active', 'power_state': 'running',
                       'name': host, 'accepted_at': time.time(), 'active_at': time.time()}
                      for u in uuids]
            usage = None if n % 5 else {
                'generation': seq, 'instances': 5, 'at': time.time(),
                'capacity': {'vcpus': 64, 'memory_mb': 65536, 'disk_gb': 100},
                'usage': {'vcpus': 5, 'memory_mb': 320, 'disk_gb': 0}}
            t = time.monotonic()
            reports.report(host, states, usage)
            latency.append(time.monotonic() - t)
            n += 1
        done.append(n)
    t0, cpu0 = time.monotonic(), cpu_sample()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, range(threads)))
    elapsed = time.monotonic() - t0
    cpu = cpu_since(cpu0)
    total = sum(done)
    return {'reports': total, 'seconds': round(elapsed, 2),
            'reports_per_s': round(total / elapsed, 1), 'clients': threads,
            'latency_s': _spread(latency),
            'cpu_s': cpu, 'conductor_cpu_ms_per_report': round(
                1000 * cpu.get('conductor', 0.0) / max(1, total), 2)}


def run(fleet: Fleet, workers: int, args) -> dict:
    """One storm of boots and one of deletes on every node; the conductor (``workers``) is
    running on a fresh database."""
    progress = fleet.progress
    m = args.boots
    specs = {host: [{'uuid': str(uuidlib.uuid4()), 'name': '%s-%d' % (host, i), 'vcpus': 1,
                     'memory_mb': 64, 'kernel': 'test-vmlinuz', 'initrd': 'test-initrd.img'}
                    for i in range(m)] for host in fleet.hosts}
    by_host = {h: [s['uuid'] for s in ss] for h, ss in specs.items()}
    total = m * len(fleet.hosts)
    events = []
    # boots: every node's storm at once
    progress.show('W=%d: %d boots on %d nodes' % (workers, total, len(fleet.hosts)), force=True)
    cpu0, t0 = cpu_sample(), time.time()
    restarts = []
    if args.restart_conductor or args.restart_db:
        def disrupt():
            time.sleep(args.disrupt_after)
            if args.restart_db and args.database == 'postgresql':
                restart_database()
                restarts.append(('database', time.time()))
            if args.restart_conductor:
                fleet.stop_conductor()
                fleet.start_conductor(workers)
                restarts.append(('conductor', time.time()))
        disruptor = threading.Thread(target=disrupt)
        disruptor.start()
    order, at = _schedule(fleet, args)
    calls = [(fleet.compute.boot_instance, h, s, s['uuid']) for h, s in _ordered(order, specs)]
    refused = _storm(fleet, calls, args.clients, at)
    answered_at = time.time()
    rows = _wait_conductor(fleet, by_host, ['active'], time.monotonic() + args.timeout)
    if args.restart_conductor or args.restart_db:
        disruptor.join()
    t1 = time.time()
    time.sleep(args.settle)                # late reports (usage) are counted too
    boot_cpu = cpu_since(cpu0)
    boot_reports = _reports_during(fleet, t0, time.time())
    agree_boot = _agree(fleet, by_host)
    lag = [r['active_seen_at'] - r['active_at'] for r in rows.values()
           if r.get('active_seen_at') and r.get('active_at')]
    events.append(('boots answered', answered_at - t0))
    # deletes
    progress.show('W=%d: deleting %d' % (workers, total), force=True)
    cpu1, t2 = cpu_sample(), time.time()
    calls = [(fleet.compute.delete_instance, h, u, u) for h, u in _ordered(order, by_host)]
    refused_delete = _storm(fleet, calls, args.clients, None if args.rate else at)
    deleted = _wait_conductor(fleet, by_host, ['deleted'], time.monotonic() + args.timeout)
    t3 = time.time()
    time.sleep(args.settle)
    delete_cpu = cpu_since(cpu1)
    delete_reports = _reports_during(fleet, t2, time.time())
    agree_delete = _agree(fleet, by_host)
    size = fleet.store().size_bytes()
    sustained = None
    if args.saturate:
        progress.show('W=%d: saturating the conductor for %gs' % (workers, args.saturate),
                      force=True)
        sustained = saturate(fleet, args.saturate, args.saturate_clients)
    fleet.stop_conductor()
    result = {
        'workers': workers, 'nodes': len(fleet.hosts), 'boots_per_node': m, 'boots': total,
        'rate': args.rate, 'node_rate': args.node_rate,
        'database': args.database, 'refused': len(refused), 'refused_examples':
            list(refused.items())[:3], 'refused_delete': len(refused_delete),
        'active_in_conductor': len(rows), 'deleted_in_conductor': len(deleted),
        'boot_phase_s': round(t1 - t0, 2), 'delete_phase_s': round(t3 - t2, 2),
        'answer_all_boots_s': round(answered_at - t0, 2),
        'lag_s': _spread(lag),
        'lag_values': sorted(round(x, 4) for x in lag),
        'lag_parts_s': _lag_parts(fleet, rows),
        'boot_reports': boot_reports, 'delete_reports': delete_reports,
        'messages_per_boot': round(boot_reports['count'] / total, 3),
        'messages_per_delete': round(delete_reports['count'] / total, 3),
        'cpu_boot_s': boot_cpu, 'cpu_delete_s': delete_cpu,
        'cpu_ms_per_message': {k: round(1000 * v / max(1, boot_reports['count']), 2)
                               for k, v in boot_cpu.items()},
        'db_size_bytes': size, 'agree_after_boots': agree_boot,
        'agree_after_deletes': agree_delete, 'restarts': restarts,
        'sustained': sustained,
    }
    parts = result['lag_parts_s']
    progress.show('W=%d: lag p50 %.3f p99 %.3f max %.3f s (p99 in agent %.3f, sent to stored '
                  '%.3f); %.3f messages per boot; final states differ: %d / %d' % (
                      workers, result['lag_s']['p50'] or 0, result['lag_s']['p99'] or 0,
                      result['lag_s']['max'] or 0, parts['in_agent']['p99'] or 0,
                      parts['sent_to_stored']['p99'] or 0, result['messages_per_boot'],
                      agree_boot['differ'], agree_delete['differ']), force=True)
    return result


# -- output -----------------------------------------------------------------------------------
def table(results: list) -> str:
    head = ('%3s | %-18s | %16s | %13s | %8s | %9s | %9s | %11s | %-40s | %6s | %s'
            % ('W', 'shape', 'lag p50/p99/max', 'p99 agt/after', 'msg/boot', 'msg/s max',
               'sustained', 'phase (s)', 'CPU ms per message (boot phase)', 'DB MiB',
               'final states'))
    lines = [head, '-' * len(head)]
    for r in results:
        lag = r['lag_s']
        parts = r.get('lag_parts_s') or {}
        cpu = ' '.join('%s %.1f' % (k[:5], v) for k, v in sorted(r['cpu_ms_per_message'].items()))
        shape = _shape(r)
        lines.append('%3d | %-18s | %4.2f/%4.2f/%5.2f | %6.2f/%6.2f | %8.3f | %9d | %9s | '
                     '%5.1f/%5.1f | %-40s | %6.1f | %d/%d differ' % (
                         r['workers'], shape, lag['p50'] or 0, lag['p99'] or 0,
                         lag['max'] or 0, (parts.get('in_agent') or {}).get('p99') or 0,
                         (parts.get('sent_to_stored') or {}).get('p99') or 0,
                         r['messages_per_boot'], r['boot_reports']['busiest_second'],
                         '%.0f/s' % r['sustained']['reports_per_s'] if r.get('sustained')
                         else '-', r['boot_phase_s'], r['delete_phase_s'], cpu,
                         r['db_size_bytes'] / 2 ** 20,
                         r['agree_after_boots']['differ'] + r['agree_after_deletes']['differ'],
                         r['agree_after_boots']['checked'] * 2))
    return '\n'.join(lines)


def _shape(r: dict) -> str:
    if r.get('rate'):
        return '%g boots/s' % r['rate']
    return '%g node storms/s' % r['node_rate'] if r.get('node_rate') else 'all at once'


def plot(results: list, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        values = r['lag_values']
        if not values:
            continue
        ys = [(i + 1) / len(values) for i in range(len(values))]
        ax.plot(values, ys, label='W = %d (%s), %d boots on %d nodes, %s' % (
            r['workers'], r['database'], r['boots'], r['nodes'], _shape(r)))
    ax.axvline(1.0, color='grey', linestyle=':', label='target p99 < 1 s')
    ax.set_xlabel('ACTIVE in the agent -> row in the conductor (s)')
    ax.set_ylabel('fraction of instances')
    ax.set_title('Fleet simulation: report lag')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(data: dict, out: str) -> None:
    print(table(data['results']))
    png = os.path.splitext(out)[0] + '.png'
    try:
        plot(data['results'], png)
        print('\nJSON %s\nplot %s' % (out, png))
    except ImportError:
        print('\nJSON %s (no plot: matplotlib missing)' % out)


def default_out(args) -> str:
    shape = 'paced' if args.rate else 'nodestorms' if args.node_rate else 'storm'
    if args.restart_conductor or args.restart_db:
        shape += '-restarts'
    if args.database != 'postgresql':
        shape += '-' + args.database
    return os.path.join(TOP, 'docs', 'bench', 'fleet-k%d-m%d-%s.json' % (
        args.nodes, args.boots, shape))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--nodes', '-K', type=int, default=100)
    p.add_argument('--boots', '-M', type=int, default=20)
    p.add_argument('--workers', default='1,2', help='conductor workers, one run each')
    p.add_argument('--database', choices=('postgresql', 'sqlite'), default='postgresql')
    p.add_argument('--clients', type=int, default=64)
    p.add_argument('--rate', type=float, default=0.0,
                   help='boots per second across the fleet, one by one round robin over the '
                        'nodes (0: every storm at once); the deletes are at once')
    p.add_argument('--node-rate', type=float, default=2.0,
                   help='node storms per second: node after node, each node gets its M boots '
                        '(later its M deletes) at once; 0: every node at once (with --rate 0: '
                        'all K x M boots at once)')
    p.add_argument('--agent-threads', type=int, default=4,
                   help='work-queue threads per agent (the test driver answers at once)')
    p.add_argument('--saturate', type=float, default=10.0,
                   help='seconds of reports back to back after the deletes: the reports per '
                        'second the conductor sustains (0: skip)')
    p.add_argument('--saturate-clients', type=int, default=32)
    p.add_argument('--restart-conductor', action='store_true')
    p.add_argument('--restart-db', action='store_true')
    p.add_argument('--disrupt-after', type=float, default=2.0)
    p.add_argument('--settle', type=float, default=3.0)
    p.add_argument('--timeout', type=float, default=600.0)
    p.add_argument('--workdir', default='/var/lib/compute-agent/fleet')
    p.add_argument('--out', metavar='PATH',
                   help='the JSON (the plot next to it); default docs/bench/fleet-kK-mM-SHAPE'
                        '.json, SHAPE: nodestorms, storm (all at once) or paced, -restarts')
    p.add_argument('--venv', default=os.path.join(TOP, '.venv'))
    p.add_argument('--image-dir', default='/var/lib/compute-agent/images')
    p.add_argument('--from-json', metavar='PATH')
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            report(json.load(f), args.from_json)
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    progress = bs.Progress()
    fleet = Fleet(args, progress)
    data = {'started_at': time.time(), 'cpus': os.cpu_count(), 'args': {
        k: v for k, v in vars(args).items() if k not in ('from_json',)}, 'results': []}
    out = args.out or default_out(args)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    try:
        for index, w in enumerate(int(x) for x in args.workers.split(',') if x):
            fleet.fresh_database()
            fleet.start_conductor(w)
            if index == 0:           # the conductor first: no agent starts in back-off
                t = time.monotonic()
                fleet.start_agents()
                fleet.wait_nodes_reported()
                data['agents_start_s'] = round(time.monotonic() - t, 1)
            data['results'].append(run(fleet, w, args))
            with open(out, 'w') as f:
                json.dump(data, f, indent=1)
    finally:
        fleet.close()
    report(data, out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
