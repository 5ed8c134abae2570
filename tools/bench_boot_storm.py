#!/usr/bin/env python3
"""Boot-storm benchmark: N boots at once through RabbitMQ to a running agent, against the floor.

Run it through tools/bench-boot-storm.sh (node set-up, test guest, venv, then this). For each N
and each repetition it runs, one after the other on the same node:

- the floor: the same N domains (the agent's own XML builder, renamed) defined and started
  directly with libvirt-python from N native threads, one connection each, no agent. Time to
  ACTIVE = request to the STARTED lifecycle event reaching this process; time to ready =
  request to the agent-lifecycle "connected" event (the guest opened its agent channel).
- the agent: a fresh compute-agent process (already serving) first answers N ``ping``s
  released at once (the answer-time yardstick), then gets N boot_instance requests released
  at once from N client threads. Time to ACTIVE / ready = request to the conductor's first
  event in the agent (its ``active_at`` / ``ready_at``, as the floor's are its own event
  times); the conductor's first sight of them (``active_seen_at`` / ``ready_seen_at``) is
  reported apart, as the report lag (coalesced reports: at most ``report_busy_window``).

Then everything is deleted. The figures per N are medians over the repetitions (this machine
is noisy: +-30 % run to run). Output: a table, ``boot-storm.json`` (every run, and per N:
ACTIVE and ready median, p90, max, for agent and floor, their ratios, boot_instance and ping
answer p99, accepts/s, libvirt calls per boot, storage commands, conductor messages per boot
and the report lag p99, work-queue wait p50/p99, agent peak RSS, CPU seconds per process),
``boot-storm.png`` (median and max time to ACTIVE and to ready against N, agent beside floor)
and one Chrome trace per agent run. Capacity is set explicitly: 1-vCPU guests that idle once
booted, ``cpu_allocation_ratio = 64`` (N = 100 fits 2 cores; the default would refuse the
33rd vCPU).

``--runtimes eventlet,threading`` runs the agent once per ``[DEFAULT] runtime`` after each
floor run, and tabulates each runtime apart against the same floors.

``--accept-rate M`` measures how many boot_instance requests per second an agent accepts
(validated, claimed, journaled, answered) against the round trip of the no-op ``ping`` over
the same clients: an agent on libvirt's test driver, hosted by libvirtd
(``test+unix:///default``: no VM is started, the driver's work stays in libvirtd as QEMU's
does, everything else is the real agent), M requests from ``--clients`` threads.
"""
import argparse
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid as uuidlib

import libvirt

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOP)

from agent import conf as agent_conf  # noqa: E402
from agent import exception  # noqa: E402
from agent import rpc  # noqa: E402
from agent.conductor import api as conductor_api  # noqa: E402
from agent.rpc import api as compute_api  # noqa: E402
from agent.virt.libvirt import config as vconfig  # noqa: E402

URI = 'qemu:///system'
CMDLINE = 'console=ttyS0 quiet no_timer_check'
# Broker credentials (TLS) made by tools/setup-node.sh: the agent's role and the control plane's.
CONTROL_CREDS = '/etc/compute-agent/messaging-control.conf'


def pct(values, q):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def free_port() -> int:
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Progress:
    """One status line, rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self):
        self._tty = sys.stderr.isatty()
        self._last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self._tty:
            sys.stderr.write('\r\033[K' + text)
            sys.stderr.flush()
        elif force or now - self._last >= 5:
            sys.stderr.write(text + '\n')
            self._last = now

    def done(self, text: str) -> None:
        if self._tty:
            sys.stderr.write('\r\033[K')
        sys.stderr.write(text + '\n')


class Floor:
    """Raw libvirt-python: N threads, one connection each, define + create; STARTED events."""

    def __init__(self, workdir: str, image_dir: str, virt_type: str, progress: Progress):
        self.dir = os.path.join(workdir, 'floor')
        os.makedirs(self.dir, exist_ok=True)
        self.image_dir = image_dir
        self.virt_type = virt_type
        self.progress = progress
        libvirt.registerErrorHandler(lambda ctx, err: None, None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=self._loop, daemon=True).start()
        self.conn = libvirt.open(URI)
        self.arch = vconfig.parse_capabilities(self.conn.getCapabilities())['arch']
        self.started: dict = {}
        self.ready: dict = {}
        self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                         self._event, None)
        self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
                                         self._agent_event, None)
        left = [d.UUIDString() for d in self.conn.listAllDomains()
                if d.name().startswith('bench-floor-')]
        if left:
            self.progress.done('removing %d floor domains an interrupted run left' % len(left))
            self._remove(left)

    @staticmethod
    def _loop():
        while True:
            libvirt.virEventRunDefaultImpl()

    def _event(self, conn, dom, event, detail, opaque):
        if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
            self.started.setdefault(dom.UUIDString(), time.monotonic())

    def _agent_event(self, conn, dom, state, reason, opaque):
        if state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED:
            self.ready.setdefault(dom.UUIDString(), time.monotonic())

    def _xml(self, uuid: str, index: int, memory_mb: int) -> str:
        xml = vconfig.GuestConfig(
            uuid=uuid, name='floor', virt_type=self.virt_type, arch=self.arch, vcpus=1,
            memory_mb=memory_mb, console_log=os.path.join(self.dir, uuid + '.log'),
            kernel=os.path.join(self.image_dir, 'test-vmlinuz'),
            initrd=os.path.join(self.image_dir, 'test-initrd.img'), cmdline=CMDLINE,
            nics=(vconfig.NicConfig(type='user', mac='52:54:00:fe:%02x:%02x'
                                    % (index // 256, index % 256)),),
            tcg_tb_cache_mb=16).to_xml()
        # Not the agent's name prefix and not its metadata host: the agent never takes these.
        return xml.replace('<name>%s' % vconfig.DOMAIN_PREFIX, '<name>bench-floor-', 1)

    def run(self, n: int, memory_mb: int, ready_timeout: float) -> dict:
        uuids = [str(uuidlib.uuid4()) for _ in range(n)]
        xmls = {u: self._xml(u, i, memory_mb) for i, u in enumerate(uuids)}
        barrier = threading.Barrier(n)
        t0, errors = {}, {}
        cpu_before = cpu_by_process()

        def boot(uuid):
            conn = libvirt.open(URI)
            try:
                barrier.wait()
                t0[uuid] = time.monotonic()
                conn.defineXML(xmls[uuid]).createWithFlags(0)   # one RPC, as the agent
            except libvirt.libvirtError as exc:
                errors[uuid] = str(exc)
            finally:
                conn.close()
        threads = [threading.Thread(target=boot, args=(u,)) for u in uuids]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and (
                any(t.is_alive() for t in threads)
                or len([u for u in uuids if u in self.started]) + len(errors) < n):
            self.progress.show('floor N=%d: started %d/%d' % (
                n, len([u for u in uuids if u in self.started]), n))
            time.sleep(0.1)
        active = {u: self.started[u] - t0[u] for u in uuids if u in self.started}
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and not all(u in self.ready for u in active):
            self.progress.show('floor N=%d: started %d/%d, ready %d/%d' % (
                n, len(active), n, len([u for u in uuids if u in self.ready]), n))
            time.sleep(0.2)
        ready = {u: self.ready[u] - t0[u] for u in active if u in self.ready}
        cpu = cpu_since(cpu_before)
        self._remove(uuids)
        return {'active_s': active, 'ready_s': ready, 'errors': errors, 'cpu_s': cpu}

    def _remove(self, uuids):
        def remove(uuid):
            try:
                dom = self.conn.lookupByUUIDString(uuid)
            except libvirt.libvirtError:
                return
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
            dom.undefine()
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(remove, uuids))
        for uuid in uuids:
            try:
                os.unlink(os.path.join(self.dir, uuid + '.log'))
            except FileNotFoundError:
                pass


def proc_status(pid: int) -> dict:
    out = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                out[key] = int(value.split()[0]) * 1024
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    out['cpu_s'] = (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    return out


CPU_NAMES = {'libvirtd': 'libvirtd', 'beam.smp': 'rabbitmq', 'qemu-system-x86': 'qemu'}


def cpu_by_process(pids: dict | None = None) -> dict:
    """CPU seconds so far: per pid (qemu, libvirtd, RabbitMQ's beam.smp), and of ``pids``
    (name -> pid: the agent, the conductor)."""
    out = {}
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % pid) as f:
                head, _, rest = f.read().rpartition(')')
        except OSError:
            continue
        comm = head.split('(', 1)[1]
        if comm in CPU_NAMES:
            fields = rest.split()
            out[(CPU_NAMES[comm], int(pid))] = (int(fields[11]) + int(fields[12])) \
                / os.sysconf('SC_CLK_TCK')
    for name, pid in (pids or {}).items():
        try:
            out[(name, pid)] = proc_status(pid)['cpu_s']
        except OSError:
            pass
    return out


def cpu_since(before: dict, pids: dict | None = None) -> dict:
    """CPU seconds per process kind (qemu summed over its processes) since ``before``."""
    total: dict = {}
    for (name, pid), cpu in cpu_by_process(pids).items():
        total[name] = round(total.get(name, 0.0) + cpu - before.get((name, pid), 0.0), 2)
    return total


class Services:
    """The conductor (for the whole benchmark) and an agent process per run."""

    def __init__(self, workdir: str, venv: str, virt_type: str, image_dir: str):
        self.workdir = workdir
        self.venv = venv
        self.host = 'bench-%s' % socket.gethostname().split('.')[0]
        self.topic = 'conductor-bench'
        self.config = os.path.join(workdir, 'agent.conf')
        with open(self.config, 'w') as f:
            f.write('[DEFAULT]\nhost = %s\n'
                    'image_dir = %s\ninstances_path = %s\n'
                    '[libvirt]\nvirt_type = %s\n[conductor]\ntopic = %s\ndatabase = %s\n'
                    '[storage]\nbackend = file\n[network]\nallow_user_nics = true\n'
                    # 1-vCPU test guests that idle once booted: N = 100 fits 2 cores.
                    '[resources]\ncpu_allocation_ratio = 64\n'
                    % (self.host, image_dir, os.path.join(workdir, 'instances'), virt_type,
                       self.topic, os.path.join(workdir, 'conductor.sqlite')))
        # The benchmark node's own broker user and report key (tools/setup-node.sh --node).
        subprocess.run([os.path.join(TOP, 'tools', 'setup-node.sh'), '--node', self.host],
                       check=True, stdout=subprocess.DEVNULL)
        self.agent_creds = '/etc/compute-agent/messaging-agent-%s.conf' % self.host
        agent_conf.CONF(['--config-file', self.config, '--config-file', CONTROL_CREDS],
                        project='compute-agent-bench', default_config_files=[])
        self.transport = rpc.get_transport(agent_conf.CONF)
        self.nodes = rpc.NodeTransports(agent_conf.CONF)
        self.compute = compute_api.ComputeAPI(self.nodes, timeout=120)
        self.conductor = conductor_api.ConductorAPI(self.transport, self.topic, timeout=120)
        self.procs: dict = {}
        self.start('conductor', 'agent.cmd.conductor', [CONTROL_CREDS])

    def start(self, name: str, module: str, extra_configs: list) -> subprocess.Popen:
        log = open(os.path.join(self.workdir, name + '.log'), 'ab')
        argv = [os.path.join(self.venv, 'bin', 'python'), '-m', module, '--config-file', self.config]
        for extra in extra_configs:
            argv += ['--config-file', extra]
        proc = self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        return proc

    def start_agent(self, run: str, overrides: str, trace: bool = True) -> subprocess.Popen:
        """A fresh agent with its own journal, trace and metrics port; returns once it serves."""
        self.metrics_port = free_port()
        for suffix in ('-jobs.sqlite', '-jobs.sqlite-wal', '-jobs.sqlite-shm', '-trace.json'):
            try:
                os.unlink(os.path.join(self.workdir, run + suffix))   # of an earlier benchmark
            except FileNotFoundError:
                pass
        extra = os.path.join(self.workdir, run + '.conf')
        with open(extra, 'w') as f:
            f.write('[jobs]\njournal = %s\n[metrics]\nlisten_address = 127.0.0.1\nport = %d\n'
                    % (os.path.join(self.workdir, run + '-jobs.sqlite'), self.metrics_port))
            if trace:
                f.write('[trace]\npath = %s\n' % os.path.join(self.workdir, run + '-trace.json'))
            f.write(overrides)
        proc = self.start('agent', 'agent.cmd.agent', [self.agent_creds, extra])
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit('agent exited; see %s/agent.log' % self.workdir)
            try:
                self.compute.ping(self.host, timeout=2)
                return proc
            except Exception:
                if time.monotonic() > deadline:
                    raise SystemExit('agent did not answer; see %s/agent.log' % self.workdir)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def metrics_text(self) -> str:
        with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % self.metrics_port,
                                    timeout=10) as answer:
            return answer.read().decode()

    def close(self) -> None:
        self.stop('agent')
        self.stop('conductor')
        self.nodes.cleanup()
        self.transport.cleanup()


def released_at_once(n: int, fn) -> dict:
    """Call ``fn(i)`` from n threads released together; {i: seconds to its answer}."""
    barrier = threading.Barrier(n)
    took = {}

    def one(i):
        barrier.wait()
        t = time.monotonic()
        fn(i)
        took[i] = time.monotonic() - t
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        for f in [pool.submit(one, i) for i in range(n)]:
            f.result()
    return took


def wait_conductor(svc: Services, uuids: list, states: list, ready: bool, deadline: float,
                   progress, what: str) -> dict:
    """The conductor's rows once each uuid is in ``states`` (and ready), or at ``deadline``."""
    waiting, rows = list(uuids), {}
    while waiting and time.monotonic() < deadline:
        done = svc.conductor.wait_instances(waiting, states, 2.0, ready=ready)
        rows.update({u: r for u, r in done.items() if r and r['vm_state'] in states
                     and (not ready or r['readiness'] == 'ready')})
        waiting = [u for u in waiting if u not in rows]
        progress.show('%s %d/%d' % (what, len(rows), len(uuids)))
    return rows


def storm(svc: Services, n: int, memory_mb: int, ready_timeout: float, progress, run: str,
          overrides: str = '', runtime: str = 'eventlet') -> dict:
    proc = svc.start_agent(run, '[DEFAULT]\nruntime = %s\n%s' % (runtime, overrides))
    serving = svc.compute.get_stats(svc.host)['runtime']
    if serving['name'] != runtime or serving['green'] != (runtime == 'eventlet'):
        raise SystemExit('the agent runs %s, not %s' % (serving, runtime))
    # The benchmark's node name is its own: whatever that node still holds, an interrupted
    # run left (the agent adopted it at start-up).
    left = [i['uuid'] for i in svc.compute.list_instances(svc.host)]
    if left:
        progress.done('deleting %d instances an interrupted run left' % len(left))
        for u in left:
            svc.compute.delete_instance(svc.host, u)
        svc.conductor.wait_instances(left, ['deleted'], 300)
    # The yardstick of answer times: N pings released at once, as the boots will be.
    released_at_once(n, lambda i: svc.compute.ping(svc.host))        # warm-up
    pings = released_at_once(n, lambda i: svc.compute.ping(svc.host))
    capacity = svc.compute.get_resources(svc.host)['capacity']
    before = svc.compute.get_stats(svc.host)
    pids = {'agent': proc.pid, 'conductor': svc.procs['conductor'].pid}
    cpu_before = cpu_by_process(pids)
    reports_before = svc.conductor.report_count(svc.host)
    uuids = [str(uuidlib.uuid4()) for _ in range(n)]
    t0, t0_wall, answered, refused = {}, {}, {}, {}

    def boot(i):
        uuid = uuids[i]
        spec = {'uuid': uuid, 'name': 'storm-%d' % i, 'vcpus': 1, 'memory_mb': memory_mb,
                'kernel': 'test-vmlinuz', 'initrd': 'test-initrd.img', 'cmdline': CMDLINE,
                'nics': [{'type': 'user'}]}
        t0_wall[uuid], t0[uuid] = time.time(), time.monotonic()
        try:
            svc.compute.boot_instance(svc.host, spec)
            answered[uuid] = time.monotonic() - t0[uuid]
        except exception.AgentError as exc:
            refused[uuid] = exc.args[0]
    progress.show('agent N=%d: booting' % n, force=True)
    released_at_once(n, boot)
    first = min(t0.values())
    accept_span = max(t0[u] + answered[u] for u in answered) - first if answered else None
    rows = wait_conductor(svc, list(answered), ['active', 'error'], False, first + 600,
                          progress, 'agent N=%d: active' % n)
    active_uuids = [u for u, r in rows.items() if r['vm_state'] == 'active']
    ready_rows = wait_conductor(svc, active_uuids, ['active'], True,
                                time.monotonic() + ready_timeout, progress,
                                'agent N=%d: ready' % n)
    reports = svc.conductor.report_count(svc.host) - reports_before
    cpu = cpu_since(cpu_before, pids)
    # The agent's times are its own event times (as the floor's are), the conductor's first
    # sight of them apart (the report's trip: coalesced, see report_lag_s).
    active = {u: rows[u]['active_at'] - t0_wall[u] for u in active_uuids}
    ready = {u: r['ready_at'] - t0_wall[u] for u, r in ready_rows.items()}
    seen = {'active': {u: rows[u]['active_seen_at'] - t0_wall[u] for u in active_uuids},
            'ready': {u: r['ready_seen_at'] - t0_wall[u] for u, r in ready_rows.items()}}
    lag = {'active': [rows[u]['active_seen_at'] - rows[u]['active_at'] for u in active_uuids],
           'ready': [r['ready_seen_at'] - r['ready_at'] for r in ready_rows.values()]}
    after = svc.compute.get_stats(svc.host)
    holding = proc_status(proc.pid)
    metrics_ok = 'compute_agent_boot_to_ready_seconds_count' in svc.metrics_text()
    trace = svc.compute.write_trace(svc.host)
    progress.show('agent N=%d: deleting' % n, force=True)
    for u in answered:
        svc.compute.delete_instance(svc.host, u)
    svc.conductor.wait_instances(list(answered), ['deleted'], 300)
    svc.stop('agent')

    def diff(a, b):
        return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if b.get(k, 0) - a.get(k, 0)}
    calls = diff(before['driver']['libvirt_calls'], after['driver']['libvirt_calls'])
    calls.pop('getAllDomainStats', None)     # the periodic audit's listing, not a boot's
    commands = diff(before['commands'], after['commands'])
    wq = after['workqueue']['all']
    return {
        'runtime': runtime,
        'active_s': active, 'ready_s': ready, 'answer_s': answered, 'refused': refused,
        'ping_s': list(pings.values()), 'capacity': capacity,
        'errors': {u: r['fault'] for u, r in rows.items() if r['vm_state'] != 'active'},
        'not_ready': sorted(set(active_uuids) - set(ready_rows)),
        'accepts_per_s': len(answered) / accept_span if accept_span else None,
        'libvirt_calls': calls, 'libvirt_calls_per_boot': sum(calls.values()) / n,
        'storage_commands': commands, 'lvs_invocations': commands.get('lvs', 0),
        'conductor_messages': reports, 'report_lag_s': lag, 'conductor_seen_s': seen,
        'reporter': {k: after['reporter'][k] - before['reporter'].get(k, 0)
                     for k in ('reports_sent', 'states_sent', 'resource_reports_sent')},
        'workqueue_wait_p50_ms': wq['wait_p50_ms'], 'workqueue_wait_p99_ms': wq['wait_p99_ms'],
        'agent_rss_bytes': holding['VmRSS'], 'agent_peak_rss_bytes': holding['VmHWM'],
        'agent_cpu_s_per_boot': cpu.get('agent', 0.0) / n, 'cpu_s': cpu,
        'metrics_endpoint_ok': metrics_ok, 'trace': trace.get('path'),
        'trace_events': trace.get('events'),
    }


def message_floor(times: list, window: float = 0.5) -> int:
    """The fewest messages that carry every change at ``times`` (seconds) with none waiting
    longer than ``window``: greedy cover of the sorted times by windows."""
    count, until = 0, None
    for t in sorted(times):
        if until is None or t > until:
            count, until = count + 1, t + window
    return count


def run_message_floor(run: dict) -> int:
    """The lower bound of a run's conductor messages at 0.5 s latency, from its changes:
    accepted (the answer), ACTIVE and ready of every instance."""
    return message_floor(list(run['answer_s'].values()) + list(run['active_s'].values())
                         + list(run['ready_s'].values()))


def summarize(n: int, runs: list, floors: list) -> dict:
    def med(key):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def per_run(results, field, q):
        return [pct(list(r[field].values()), q) for r in results if r[field]]

    def figures(results, prefix=''):
        out = {}
        for field, name in (('active_s', ''), ('ready_s', 'ready_')):
            for q, label in ((0.5, 'median_s'), (0.9, 'p90_s'), (1.0, 'max_s')):
                vals = per_run(results, field, q)
                out[prefix + name + label] = statistics.median(vals) if vals else None
        return out
    answers = [a for r in runs for a in r['answer_s'].values()]
    pings = [p for r in runs for p in r['ping_s']]
    lag = {k: [x for r in runs for x in r['report_lag_s'][k]] for k in ('active', 'ready')}
    seen = {k: statistics.median(pct(list(r['conductor_seen_s'][k].values()), 1.0)
                                 for r in runs if r['conductor_seen_s'][k])
            for k in ('active', 'ready') if any(r['conductor_seen_s'][k] for r in runs)}
    out = {'n': n, 'runtime': runs[0].get('runtime', 'eventlet'), 'repeats': len(runs),
           **figures(runs),
           'conductor_seen_max_s': seen,
           'answer_p99_ms': round(pct(answers, 0.99) * 1000, 1),
           'ping_p99_ms': round(pct(pings, 0.99) * 1000, 1),
           'accepts_per_s': med('accepts_per_s'),
           'libvirt_calls_per_boot': med('libvirt_calls_per_boot'),
           'lvs_invocations': med('lvs_invocations'),
           'conductor_messages': med('conductor_messages'),
           'conductor_messages_per_boot': round(med('conductor_messages') / n, 3),
           'conductor_messages_floor_at_0_5s': statistics.median(
               run_message_floor(r) for r in runs),
           'report_lag_p99_s': {k: round(pct(v, 0.99), 3) if v else None
                                for k, v in lag.items()},
           'workqueue_wait_p50_ms': med('workqueue_wait_p50_ms'),
           'workqueue_wait_p99_ms': med('workqueue_wait_p99_ms'),
           'agent_peak_rss_mib': round(max(r['agent_peak_rss_bytes'] for r in runs) / 2 ** 20, 1),
           'agent_cpu_s_per_boot': med('agent_cpu_s_per_boot'),
           'cpu_s': {k: statistics.median(r['cpu_s'].get(k, 0.0) for r in runs)
                     for k in sorted({k for r in runs for k in r['cpu_s']})},
           'capacity': runs[0]['capacity'],
           'all_active': all(len(r['active_s']) == n for r in runs),
           'all_ready': all(len(r['ready_s']) == n for r in runs)}
    out['answer_p99_to_ping_p99'] = round(out['answer_p99_ms'] / out['ping_p99_ms'], 2)
    if floors:
        out.update(figures(floors, 'floor_'))
        out['floor_cpu_s'] = {k: statistics.median(f['cpu_s'].get(k, 0.0) for f in floors)
                              for k in sorted({k for f in floors for k in f['cpu_s']})}
        for name in ('', 'ready_'):
            for q in ('median', 'max'):
                agent, floor = out[name + q + '_s'], out['floor_' + name + q + '_s']
                out['ratio_' + name + q] = round(agent / floor, 3) if agent and floor else None
        # The same ratios run by run (agent run k against the floor run just before it).
        for field, key in (('active_s', 'ratio_max_per_run'), ('ready_s', 'ratio_ready_max_per_run')):
            out[key] = [round(pct(list(a[field].values()), 1.0)
                              / pct(list(f[field].values()), 1.0), 3)
                        for a, f in zip(runs, floors) if a[field] and f[field]]
    return out


def accept_rate(svc: Services, count: int, clients: int, progress) -> dict:
    """boot_instance against ping, the same clients, on an agent over libvirt's test driver."""
    overrides = ('[libvirt]\nvirt_type = test\nconnection_uri = test+unix:///default\n'
                 '[resources]\ncpu_allocation_ratio = 10000\nram_allocation_ratio = 10000\n'
                 'reserved_host_memory_mb = 0\n')
    agent = svc.start_agent('accept-rate', overrides, trace=False)   # as in production

    def fire(method):
        times, refused = [], []
        lock = threading.Lock()
        todo = iter(range(count))

        def client():
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                t = time.monotonic()
                try:
                    if method == 'ping':
                        svc.compute.ping(svc.host)
                    else:
                        svc.compute.boot_instance(svc.host, {
                            'uuid': str(uuidlib.uuid4()), 'memory_mb': 128,
                            'kernel': 'test-vmlinuz', 'initrd': 'test-initrd.img'})
                except exception.AgentError as exc:
                    refused.append(exc.args[0])
                times.append(time.monotonic() - t)
        cpu = proc_status(agent.pid)['cpu_s']
        start = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            progress.show('accept rate: %s %d/%d' % (method, len(times), count))
            time.sleep(0.1)
        span = time.monotonic() - start
        cpu = proc_status(agent.pid)['cpu_s'] - cpu     # includes boot jobs still running
        return {'requests': count, 'clients': clients, 'seconds': round(span, 3),
                'agent_cpu_ms_per_request': round(cpu / count * 1000, 2),
                'per_s': round(count / span, 1), 'refused': len(refused),
                'p50_ms': round(pct(times, 0.5) * 1000, 2), 'p99_ms': round(pct(times, 0.99) * 1000, 2),
                'max_ms': round(max(times) * 1000, 2)}
    fire('ping')                      # warm-up: connections, reply queues
    ping = fire('ping')
    boot = fire('boot_instance')
    stats = svc.compute.get_stats(svc.host)
    svc.stop('agent')
    return {'ping': ping, 'boot_instance': boot,
            'p99_ratio_to_ping': round(boot['p99_ms'] / ping['p99_ms'], 2),
            'journal': stats['manager']['journal'],
            'agent_max_rss_mib': round(stats['process']['max_rss_kb'] / 1024, 1),
            'instances_held': stats['manager']['instances']}


def plot(summaries: list, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    runtimes = sorted({s.get('runtime', 'eventlet') for s in summaries})
    first = [s for s in summaries if s.get('runtime', 'eventlet') == runtimes[0]]
    ns = [s['n'] for s in first]
    fig, axes = pyplot.subplots(1, 2, figsize=(12, 4.5))
    for ax, name, what in ((axes[0], '', 'ACTIVE'), (axes[1], 'ready_', 'ready')):
        for runtime, color in zip(runtimes, ('tab:blue', 'tab:orange')):
            mine = [s for s in summaries if s.get('runtime', 'eventlet') == runtime]
            label = 'agent (%s)' % runtime
            ax.plot([s['n'] for s in mine], [s[name + 'median_s'] for s in mine], 'o-',
                    color=color, label=label + ' median')
            ax.plot([s['n'] for s in mine], [s[name + 'max_s'] for s in mine], 's-',
                    color=color, alpha=0.6, label=label + ' max')
        if 'floor_median_s' in first[0]:
            ax.plot(ns, [s['floor_' + name + 'median_s'] for s in first], 'o--',
                    color='tab:gray', label='libvirt floor median')
            ax.plot(ns, [s['floor_' + name + 'max_s'] for s in first], 's--',
                    color='tab:gray', alpha=0.6, label='libvirt floor max')
        ax.set_xlabel('boots requested at once (N)')
        ax.set_ylabel('time from request to %s (s)' % what)
        ax.set_title('to %s (%d repeats per N)' % (what, summaries[0]['repeats']))
        ax.set_xticks(ns)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle('Boot storm: compute-agent vs raw libvirt-python')
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _f(s: dict, key: str, fmt: str = '%.2f') -> str:
    return fmt % s[key] if s.get(key) is not None else '-'


def table(summaries: list) -> str:
    head = ('%9s %4s | %7s %7s %7s %7s %6s %6s | %7s %7s %7s %7s %6s %6s | %8s %8s %6s %6s %6s'
            % ('runtime', 'N', 'act med', 'act max', 'flr med', 'flr max', 'ratio', 'ratio',
               'rdy med', 'rdy max', 'flr med', 'flr max', 'ratio', 'ratio',
               'boot p99', 'ping p99', 'msgs', 'calls', 'cpu'))
    head2 = ('%9s %4s | %7s %7s %7s %7s %6s %6s | %7s %7s %7s %7s %6s %6s | %8s %8s %6s %6s %6s'
             % ('', '', '(s)', '(s)', '(s)', '(s)', 'med', 'max', '(s)', '(s)', '(s)', '(s)',
                'med', 'max', '(ms)', '(ms)', '/boot', '/boot', 's/boot'))
    lines = [head, head2]
    for s in summaries:
        lines.append(
            '%9s %4d | %7s %7s %7s %7s %6s %6s | %7s %7s %7s %7s %6s %6s | %8s %8s %6s %6s %6s'
            % (s.get('runtime', 'eventlet'), s['n'], _f(s, 'median_s'), _f(s, 'max_s'),
               _f(s, 'floor_median_s'), _f(s, 'floor_max_s'), _f(s, 'ratio_median'), _f(s, 'ratio_max'),
                _f(s, 'ready_median_s'), _f(s, 'ready_max_s'), _f(s, 'floor_ready_median_s'),
                _f(s, 'floor_ready_max_s'), _f(s, 'ratio_ready_median'),
                _f(s, 'ratio_ready_max'), _f(s, 'answer_p99_ms', '%.1f'),
                _f(s, 'ping_p99_ms', '%.1f'), _f(s, 'conductor_messages_per_boot'),
                _f(s, 'libvirt_calls_per_boot'), _f(s, 'agent_cpu_s_per_boot', '%.3f')))
    return '\n'.join(lines)


def from_json(path: str) -> int:
    """Recompute the summaries, table and plot of an earlier run's JSON (in place)."""
    with open(path) as f:
        result = json.load(f)
    result['summary'] = []
    for n in result['sizes']:
        floors = [r for r in result['runs'] if r['n'] == n and r['kind'] == 'floor']
        for runtime in result.get('runtimes', ['eventlet']):
            runs = [r for r in result['runs'] if r['n'] == n and r['kind'] == 'agent'
                    and r.get('runtime', 'eventlet') == runtime]
            if runs:
                result['summary'].append(summarize(n, runs, floors))
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)
    png = os.path.splitext(path)[0] + '.png'
    plot(result['summary'], png)
    print(table(result['summary']))
    print('\nJSON %s\nplot %s' % (path, png))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', default='1,10,20,50,100',
                   help='comma-separated N values (default: the sweep 1,10,20,50,100)')
    p.add_argument('--repeat', type=int, default=3, help='runs per N, floor and agent each')
    p.add_argument('--no-floor', action='store_true', help='skip the raw-libvirt floor')
    p.add_argument('--runtimes', default='eventlet',
                   help="the agent's [DEFAULT] runtime values to run, comma-separated "
                        '(eventlet,threading: both, each after the same floor run)')
    p.add_argument('--memory-mb', type=int, default=96)
    p.add_argument('--ready-timeout', type=float, default=900.0,
                   help='seconds to wait for the guests to be ready after ACTIVE')
    p.add_argument('--accept-rate', type=int, default=0, metavar='M',
                   help='also run the acceptance-rate benchmark with M requests')
    p.add_argument('--clients', type=int, default=32, help='client threads of --accept-rate')
    p.add_argument('--workdir', default='/var/lib/compute-agent/bench')
    p.add_argument('--venv', default=os.path.join(TOP, '.venv'))
    p.add_argument('--image-dir', default='/var/lib/compute-agent/images')
    p.add_argument('--virt-type', default='qemu')
    p.add_argument('--from-json', metavar='PATH',
                   help='no runs: summarise, tabulate and plot the runs of an earlier JSON')
    args = p.parse_args(argv)
    if args.from_json:
        return from_json(args.from_json)
    sizes = [int(x) for x in args.sizes.split(',') if x]
    runtimes = [x for x in args.runtimes.split(',') if x]
    unknown = set(runtimes) - {'eventlet', 'threading'}
    if unknown or not runtimes:
        p.error('--runtimes: eventlet and/or threading, not %s' % (sorted(unknown) or 'nothing'))
    os.makedirs(args.workdir, exist_ok=True)
    progress = Progress()
    svc = Services(args.workdir, args.venv, args.virt_type, args.image_dir)
    floor = None if args.no_floor else Floor(args.workdir, args.image_dir, args.virt_type,
                                             progress)
    result = {'started_at': time.time(), 'virt_type': args.virt_type, 'sizes': sizes,
              'repeat': args.repeat, 'runtimes': runtimes, 'memory_mb': args.memory_mb,
              'cpus': os.cpu_count(),
              'runs': [], 'summary': []}
    out = os.path.join(args.workdir, 'boot-storm.json')
    try:
        for n in sizes:
            runs, floors = {r: [] for r in runtimes}, []
            for rep in range(args.repeat):
                if floor is not None:
                    f = floor.run(n, args.memory_mb, args.ready_timeout)
                    floors.append(f)
                    result['runs'].append({'kind': 'floor', 'n': n, 'rep': rep, **f})
                    progress.done('floor N=%d run %d: max %.2f s to STARTED, %.2f s to ready' % (
                        n, rep + 1, max(f['active_s'].values(), default=0),
                        max(f['ready_s'].values(), default=0)))
                for runtime in runtimes:
                    a = storm(svc, n, args.memory_mb, args.ready_timeout, progress,
                              'n%d-r%d-%s' % (n, rep, runtime), runtime=runtime)
                    runs[runtime].append(a)
                    result['runs'].append({'kind': 'agent', 'n': n, 'rep': rep, **a})
                    progress.done(
                        'agent (%s) N=%d run %d: max %.2f s to ACTIVE, %.2f s to ready, %d active, '
                        '%d ready, %d messages, %s' % (
                            runtime, n, rep + 1, max(a['active_s'].values(), default=0),
                            max(a['ready_s'].values(), default=0), len(a['active_s']),
                            len(a['ready_s']), a['conductor_messages'],
                            'errors: %s; refused: %s' % (a['errors'],
                                                         sorted(set(a['refused'].values())))
                            if a['errors'] or a['refused'] else 'no errors'))
            for runtime in runtimes:
                result['summary'].append(summarize(n, runs[runtime], floors))
            with open(out, 'w') as f:
                json.dump(result, f, indent=1)
        if args.accept_rate:
            result['accept_rate'] = accept_rate(svc, args.accept_rate, args.clients, progress)
            progress.done('accept rate: %s' % json.dumps(result['accept_rate']))
    finally:
        svc.close()
        with open(out, 'w') as f:
            json.dump(result, f, indent=1)
    if result['summary']:
        png = os.path.join(args.workdir, 'boot-storm.png')
        plot(result['summary'], png)
        print(table(result['summary']))
        print('\nJSON %s\nplot %s\ntraces %s/*-trace.json' % (out, png, args.workdir))
    if 'accept_rate' in result:
        ar = result['accept_rate']
        print('\naccept rate (%d requests, %d clients): boot_instance %.0f/s, p50 %.1f ms, '
              'p99 %.1f ms; ping %.0f/s, p50 %.1f ms, p99 %.1f ms; p99 ratio %.2f'
              % (ar['boot_instance']['requests'], ar['boot_instance']['clients'],
                 ar['boot_instance']['per_s'], ar['boot_instance']['p50_ms'],
                 ar['boot_instance']['p99_ms'], ar['ping']['per_s'], ar['ping']['p50_ms'],
                 ar['ping']['p99_ms'], ar['p99_ratio_to_ping']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
