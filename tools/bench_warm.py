#!/usr/bin/env python3
"""Warm-boot benchmark: time to ready of N boots requested at once, seven ways, on one node.

Run it through tools/bench-warm.sh (node set-up, test guest, venv, then this). For each N and
each repetition, one after the other:

- cold floor: N domains defined and started with raw libvirt-python from N threads
  (``bench_boot_storm.Floor``); ready = the agent-lifecycle "connected" event.
- cold agent: N boot_instance requests released at once to a fresh agent
  (``bench_boot_storm.storm``); ready = the instance's ``ready_at``.
- restore floor: N saved spares (made beforehand, untimed: started, ready, saved, with the
  same devices, disk and NIC as the agent's) restored with raw ``restoreFlags`` from N
  threads, one connection each, each then writing the guest its identity on its port;
  ready = the "connected" event after the restore and the guest's answer, whichever is last
  (what the agent waits for too).
- warm agent: an agent whose pool holds N saved spares (made by its filler, untimed) gets N
  boot_instance requests naming the pool, released at once; ready = ``ready_at``.
- resume floor: N hot spares (made beforehand, untimed: started, ready, their identity port
  opened, paused) resumed with raw ``resume`` from N threads, one connection each, each then
  writing the guest its identity on the open port; ready = the guest's answer.
- hot agent: an agent whose pool holds N hot spares gets N boot_instance requests naming the
  pool, released at once; ready = ``ready_at``.
- resume RPC floor: the resume floor, each thread first making one RPC round trip through
  RabbitMQ to an idle agent (``ping``: no agent work): what a request through the broker
  costs by itself, its CPU (client, broker, TLS, the agent's messaging) included.

Every guest is the tiny test guest (1 vCPU, ``--memory-mb``, one isolated user NIC; spares
also a 1 GiB qcow2 root disk). Per N, medians over the repetitions of each run's median and
max. Output: a table, ``warm-boot.json`` (every run, the summary, the ratios: warm to the
cold floor, target <= 0.2 at N = 20; warm to the restore floor, target <= 1.1; hot to the
cold floor, target <= 0.03 at N = 20; hot to the resume floor, target <= 1.1; hot to the
resume RPC floor and that floor to the resume floor: what the broker alone costs) and
``warm-boot.png``. ``--kinds`` runs a subset; ``--from-json PATH`` re-tabulates and re-plots
an earlier JSON.
"""
import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid as uuidlib

import libvirt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_boot_storm as bs  # noqa: E402
from agent import exception  # noqa: E402
from agent.virt.libvirt import config as vconfig  # noqa: E402

KINDS = ('cold_floor', 'cold_agent', 'restore_floor', 'warm_agent', 'resume_floor', 'hot_agent',
         'resume_rpc_floor')
SETTLE_S = 2.0          # [warm] settle_seconds, the agent's default
# How long the floor's hot spares stay paused before the resumes: at least as long as the
# agent's do (the hot-agent run waits a second for its filler to be idle, then pings).
PAUSED_S = 2.0
POOL = ('[warm]\npools = bench\nquiet_seconds = 0.5\n[warm_pool:bench]\nsize = %d\nhot = %d\n'
        'vcpus = 1\nmemory_mb = %d\nkernel = test-vmlinuz\ninitrd = test-initrd.img\n'
        'cmdline = %s\ndisk_gb = 1\nuser_nics = 1\n')


def identify(path: str, uuid: str, timeout: float = 120.0) -> float:
    """What the agent does for a restored guest, raw: write its identity line on the port,
    read the guest's answer; the monotonic time the answer came."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        return identify_on(sock, uuid, timeout)


def identify_on(sock: socket.socket, uuid: str, timeout: float = 120.0) -> float:
    """``identify`` on an open connection (a hot spare's, opened before it was paused)."""
    sock.settimeout(timeout)
    sock.sendall(json.dumps({'uuid': uuid, 'name': 'floor', 'pool': 'bench', 'seq': 1,
                             'time': int(time.time())}).encode() + b'\n')
    answer = b''
    while not answer.endswith(b'\n'):
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError('identity port closed before the answer')
        answer += chunk
    at = time.monotonic()
    if json.loads(answer).get('ack') != 1:
        raise ValueError('identity answer: %r' % answer)
    return at


class RestoreFloor:
    """Raw libvirt-python restores of N saved spares, from N threads (one connection each);
    uses the cold floor's connection and event loop for the events."""

    def __init__(self, floor: 'bs.Floor', progress):
        self.floor = floor
        self.dir = os.path.join(floor.dir, 'restore')
        os.makedirs(self.dir, exist_ok=True)
        for name in os.listdir(self.dir):          # what an interrupted run left
            os.unlink(os.path.join(self.dir, name))
        self.progress = progress

    def _socket(self, uuid: str) -> str:
        return os.path.join(self.dir, uuid[:8] + '.sock')

    def _xml(self, uuid: str, index: int, memory_mb: int) -> str:
        f = self.floor
        xml = vconfig.GuestConfig(
            uuid=uuid, name='floor', virt_type=f.virt_type, arch=f.arch, vcpus=1,
            memory_mb=memory_mb, console_log=os.path.join(self.dir, uuid + '.log'),
            kernel=os.path.join(f.image_dir, 'test-vmlinuz'),
            initrd=os.path.join(f.image_dir, 'test-initrd.img'), cmdline=bs.CMDLINE,
            disks=(vconfig.DiskConfig(path=os.path.join(self.dir, uuid + '.qcow2'),
                                      format='qcow2'),),
            nics=(vconfig.NicConfig(type='user', mac='52:54:00:fd:%02x:%02x'
                                    % (index // 256, index % 256)),),
            genid=True, rng=True, identity_socket=self._socket(uuid),
            tcg_tb_cache_mb=16).to_xml()
        return xml.replace('<name>%s' % vconfig.DOMAIN_PREFIX, '<name>bench-floor-', 1)

    def _prepare(self, n: int, memory_mb: int, ready_timeout: float,
                 hot: bool = False) -> dict:
        """N spares: started at once, ready, saved; uuid -> (image, its XML). Untimed.
        ``hot``: paused instead, each with its identity port open (as the agent keeps a hot
        spare); uuid -> (that connection, None)."""
        uuids = [str(uuidlib.uuid4()) for _ in range(n)]
        conn = self.floor.conn
        for u in uuids:
            subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                            os.path.join(self.dir, u + '.qcow2'), '1G'], check=True)
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda a: conn.createXML(self._xml(a[1], a[0], memory_mb), 0),
                          enumerate(uuids)))
        deadline = time.monotonic() + ready_timeout
        while not all(u in self.floor.ready for u in uuids):
            if time.monotonic() > deadline:
                raise SystemExit('restore floor: spares not ready in time')
            self.progress.show('restore floor N=%d: spares ready %d/%d' % (
                n, len([u for u in uuids if u in self.floor.ready]), n))
            time.sleep(0.2)
        # As the agent's filler does: each spare runs SETTLE_S after it became ready
        # before it is saved (most here ran longer: they waited for the slowest).
        last_ready = max(self.floor.ready[u] for u in uuids)
        time.sleep(max(0.0, SETTLE_S - (time.monotonic() - last_ready)))
        if hot:
            ports = {}
            for u in uuids:
                ports[u] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                ports[u].connect(self._socket(u))
                conn.lookupByUUIDString(u).suspend()
            for u in uuids:
                self.floor.ready.pop(u, None)
                self.floor.started.pop(u, None)
            time.sleep(PAUSED_S)
            return {u: (ports[u], None) for u in uuids}
        images = {u: os.path.join(self.dir, u + '.save') for u in uuids}

        def save(u):
            conn.lookupByUUIDString(u).saveFlags(images[u], None, 0)
            return u, (images[u], conn.saveImageGetXMLDesc(images[u], 0))
        with concurrent.futures.ThreadPoolExecutor(min(n, 8)) as pool:
            saved = dict(pool.map(save, uuids))
        for u in uuids:
            self.floor.ready.pop(u, None)
            self.floor.started.pop(u, None)
        return saved

    def run(self, n: int, memory_mb: int, ready_timeout: float, hot: bool = False,
            first=None) -> dict:
        """N restores (``hot``: resumes of paused spares) at once, each then telling its
        guest who it is. ``first()``: what each thread does after the barrier, before its
        libvirt call, on the clock (an RPC round trip: the resume floor of a request that
        comes through the broker)."""
        saved = self._prepare(n, memory_mb, ready_timeout, hot)
        uuids = list(saved)
        barrier = threading.Barrier(n)
        t0, errors, acked, called = {}, {}, {}, {}
        cpu_before = bs.cpu_by_process()

        def restore(uuid):
            conn = libvirt.open(bs.URI)
            try:
                dom = conn.lookupByUUIDString(uuid) if hot else None
                barrier.wait()
                t0[uuid] = time.monotonic()
                if first is not None:
                    first()
                if hot:
                    dom.resume()
                    called[uuid] = time.monotonic() - t0[uuid]
                    acked[uuid] = identify_on(saved[uuid][0], uuid)
                    self.floor.ready[uuid] = t0[uuid]     # its channel stayed open
                    self.floor.started[uuid] = t0[uuid]
                else:
                    conn.restoreFlags(saved[uuid][0], saved[uuid][1], 0)
                    called[uuid] = time.monotonic() - t0[uuid]
                    acked[uuid] = identify(self._socket(uuid), uuid)
            except Exception as exc:    # libvirt, the port, or first()'s RPC (a timeout)
                errors[uuid] = '%s: %s' % (type(exc).__name__, exc)
            finally:
                if hot:
                    saved[uuid][0].close()
                conn.close()
        threads = [threading.Thread(target=restore, args=(u,)) for u in uuids]
        for t in threads:
            t.start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and (
                any(t.is_alive() for t in threads)
                or len([u for u in uuids if u in self.floor.ready]) + len(errors) < n):
            self.progress.show('restore floor N=%d: ready %d/%d' % (
                n, len([u for u in uuids if u in self.floor.ready]), n))
            time.sleep(0.05)
        # Ready as itself, as the agent counts it: channel connected and identity answered.
        ready = {u: max(self.floor.ready[u], acked[u]) - t0[u] for u in uuids
                 if u in self.floor.ready and u in acked}
        active = {u: self.floor.started[u] - t0[u] for u in uuids if u in self.floor.started}
        cpu = bs.cpu_since(cpu_before)
        self._remove(uuids)
        # call_s: the libvirt call alone (resume or restoreFlags); the rest of ready_s is the
        # guest's answer.
        return {'active_s': active, 'ready_s': ready, 'call_s': called, 'errors': errors,
                'cpu_s': cpu}

    def _remove(self, uuids) -> None:
        for uuid in uuids:
            try:
                self.floor.conn.lookupByUUIDString(uuid).destroy()   # transient: gone
            except libvirt.libvirtError:
                pass
            for suffix in ('.save', '.qcow2', '.log'):
                try:
                    os.unlink(os.path.join(self.dir, uuid + suffix))
                except FileNotFoundError:
                    pass
            try:
                os.unlink(os.path.join(self.dir, uuid[:8] + '.sock'))
            except FileNotFoundError:
                pass


def warm_storm(svc: 'bs.Services', n: int, memory_mb: int, ready_timeout: float, progress,
               run: str, hot: bool = False) -> dict:
    """N warm boots at once through a fresh agent whose pool holds N saved (``hot``: N hot)
    spares."""
    kind, label = ('hot', 'hot agent') if hot else ('spares', 'warm agent')
    proc = svc.start_agent(run, POOL % (0 if hot else n, n if hot else 0, memory_mb,
                                        bs.CMDLINE))
    deadline = time.monotonic() + 120 + 60 * n
    while True:
        warm = svc.compute.get_stats(svc.host)['manager']['warm']
        if warm[kind].get('bench', 0) >= n:
            break
        if time.monotonic() > deadline:
            raise SystemExit('the pool did not fill: %s' % warm)
        progress.show('%s N=%d: pool %d/%d' % (label, n, warm[kind].get('bench', 0), n))
        time.sleep(1)
    time.sleep(1.0)                     # the filler is idle (nothing half-made)
    # As the cold storm does: N pings at once first, so the client has its N connections and
    # reply queues before the clock starts (otherwise their set-up is counted as the agent's).
    bs.released_at_once(n, lambda i: svc.compute.ping(svc.host))
    pings = bs.released_at_once(n, lambda i: svc.compute.ping(svc.host))
    before = svc.compute.get_stats(svc.host)
    pids = {'agent': proc.pid, 'conductor': svc.procs['conductor'].pid}
    cpu_before = bs.cpu_by_process(pids)
    uuids = [str(uuidlib.uuid4()) for _ in range(n)]
    t0, t0_wall, answered, refused, jobs = {}, {}, {}, {}, {}

    def boot(i):
        uuid = uuids[i]
        t0_wall[uuid], t0[uuid] = time.time(), time.monotonic()
        try:
            jobs[uuid] = svc.compute.boot_instance(
                svc.host, {'uuid': uuid, 'name': 'warm-%d' % i, 'pool': 'bench'})['job_id']
            answered[uuid] = time.monotonic() - t0[uuid]
        except exception.AgentError as exc:
            refused[uuid] = exc.args[0]
    progress.show('%s N=%d: booting' % (label, n), force=True)
    bs.released_at_once(n, boot)
    rows = bs.wait_conductor(svc, list(answered), ['active'], True,
                             time.monotonic() + ready_timeout, progress,
                             '%s N=%d: ready' % (label, n))
    cpu = bs.cpu_since(cpu_before, pids)
    results = [svc.compute.get_job(svc.host, j).get('result') or '' for j in jobs.values()]
    after = svc.compute.get_stats(svc.host)
    calls = {k: v - before['driver']['libvirt_calls'].get(k, 0)
             for k, v in after['driver']['libvirt_calls'].items()
             if v != before['driver']['libvirt_calls'].get(k, 0)}
    trace = svc.compute.write_trace(svc.host)
    progress.show('%s N=%d: deleting' % (label, n), force=True)
    for u in answered:
        svc.compute.delete_instance(svc.host, u)
    svc.conductor.wait_instances(list(answered), ['deleted'], 300)
    svc.stop('agent')
    return {'ready_s': {u: r['ready_at'] - t0_wall[u] for u, r in rows.items()},
            'active_s': {u: r['active_at'] - t0_wall[u] for u, r in rows.items()},
            'answer_s': answered, 'ping_s': list(pings.values()), 'refused': refused,
            'warm_hits': sum(r.startswith(('hot: hit' if hot else 'warm: hit')) for r in results),
            'libvirt_calls': calls, 'cpu_s': cpu, 'trace': trace.get('path')}


def resume_rpc_floor(svc: 'bs.Services', restore: RestoreFloor, n: int, memory_mb: int,
                     ready_timeout: float, run: str) -> dict:
    """The resume floor with one RPC round trip to an idle agent (``ping``: no agent work)
    before each resume: what being asked through the broker costs by itself, with its CPU
    (client, RabbitMQ, TLS, the agent's messaging) in the guests' wake-up window."""
    svc.start_agent(run, '')
    bs.released_at_once(n, lambda i: svc.compute.ping(svc.host))    # connections made
    bs.released_at_once(n, lambda i: svc.compute.ping(svc.host))
    try:
        return restore.run(n, memory_mb, ready_timeout, hot=True,
                           first=lambda: svc.compute.ping(svc.host))
    finally:
        svc.stop('agent')


def summarize(n: int, runs: dict) -> dict:
    """Per kind: medians over the repetitions of each run's median and max time to ready."""
    out = {'n': n}
    for kind in KINDS:
        done = [r for r in runs.get(kind, []) if r['ready_s']]
        for q, label in ((0.5, 'median_s'), (1.0, 'max_s')):
            vals = [bs.pct(list(r['ready_s'].values()), q) for r in done]
            out['%s_ready_%s' % (kind, label)] = round(statistics.median(vals), 3) if vals else None
        out[kind + '_all_ready'] = all(len(r['ready_s']) == n for r in runs.get(kind, []))
    for num, den in (('warm_agent', 'cold_floor'), ('warm_agent', 'restore_floor'),
                     ('cold_agent', 'cold_floor'), ('hot_agent', 'cold_floor'),
                     ('hot_agent', 'resume_floor'), ('hot_agent', 'resume_rpc_floor'),
                     ('resume_rpc_floor', 'resume_floor')):
        for q in ('median', 'max'):
            a, b = out['%s_ready_%s_s' % (num, q)], out['%s_ready_%s_s' % (den, q)]
            out['ratio_%s_to_%s_%s' % (num, den, q)] = round(a / b, 3) if a and b else None
    for kind, prefix in (('warm_agent', 'warm'), ('hot_agent', 'hot')):
        runs_of = runs.get(kind, [])
        out[prefix + '_hits'] = sum(r['warm_hits'] for r in runs_of)
        out[prefix + '_boots'] = n * len(runs_of)
        calls = [r['libvirt_calls'] for r in runs_of]
        out[prefix + '_libvirt_calls_per_boot'] = {
            k: round(statistics.median(c.get(k, 0) for c in calls) / n, 2)
            for k in sorted({k for c in calls for k in c})} if calls else {}
    return out


def table(summaries: list) -> str:
    """Per N: each kind's median/max time to ready, and each agent kind against its floor."""
    head = ['%4s' % 'N'] + ['%-20s' % k for k in KINDS] + [
        '%-11s' % r for r in ('warm/cold', 'warm/rst', 'hot/cold', 'hot/resume', 'hot/rpc',
                              'rpc/resume')]
    lines = [' | '.join(head)]
    for s in summaries:
        cells = ['%4d' % s['n']]
        for k in KINDS:
            cells.append('%-20s' % ('%s / %s' % (s['%s_ready_median_s' % k],
                                                 s['%s_ready_max_s' % k])))
        for num, den in (('warm_agent', 'cold_floor'), ('warm_agent', 'restore_floor'),
                         ('hot_agent', 'cold_floor'), ('hot_agent', 'resume_floor'),
                         ('hot_agent', 'resume_rpc_floor'), ('resume_rpc_floor', 'resume_floor')):
            cells.append('%-11s' % ('%s/%s' % (s['ratio_%s_to_%s_median' % (num, den)],
                                               s['ratio_%s_to_%s_max' % (num, den)])))
        lines.append(' | '.join(cells))
    return '\n'.join(lines)


def plot(summaries: list, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    ns = [s['n'] for s in summaries]
    fig, ax = pyplot.subplots(figsize=(8, 5))
    styles = {'cold_floor': ('tab:gray', 'cold: raw libvirt floor'),
              'cold_agent': ('tab:blue', 'cold: agent'),
              'restore_floor': ('tab:olive', 'warm: raw restoreFlags floor'),
              'warm_agent': ('tab:red', 'warm: agent'),
              'resume_floor': ('tab:cyan', 'hot: raw resume floor'),
              'hot_agent': ('tab:purple', 'hot: agent'),
              'resume_rpc_floor': ('tab:pink', 'hot: resume floor after one RPC')}
    for kind, (color, label) in styles.items():
        if all(s.get('%s_ready_median_s' % kind) is None for s in summaries):
            continue
        ax.plot(ns, [s['%s_ready_median_s' % kind] for s in summaries], 'o-', color=color,
                label=label + ' median')
        ax.plot(ns, [s['%s_ready_max_s' % kind] for s in summaries], 's--', color=color,
                alpha=0.6, label=label + ' max')
    ax.set_yscale('log')
    ax.set_xlabel('boots requested at once (N)')
    ax.set_ylabel('time from request to ready (s, log)')
    ax.set_xticks(ns)
    ax.grid(True, alpha=0.3, which='both')
    ax.legend(fontsize=8)
    ax.set_title('Hot (resumed) and warm (restored) spares vs cold boots: time to ready')
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(result: dict, out: str) -> None:
    result['summary'] = [
        summarize(n, {k: [r for r in result['runs'] if r['n'] == n and r['kind'] == k]
                      for k in KINDS}) for n in result['sizes']]
    with open(out, 'w') as f:
        json.dump(result, f, indent=1)
    png = os.path.splitext(out)[0] + '.png'
    plot(result['summary'], png)
    print(table(result['summary']))
    print('\nJSON %s\nplot %s' % (out, png))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', default='1,10,20')
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--memory-mb', type=int, default=96)
    p.add_argument('--ready-timeout', type=float, default=900.0)
    p.add_argument('--workdir', default='/var/lib/compute-agent/bench')
    p.add_argument('--venv', default=os.path.join(bs.TOP, '.venv'))
    p.add_argument('--image-dir', default='/var/lib/compute-agent/images')
    p.add_argument('--virt-type', default='qemu')
    p.add_argument('--kinds', default=','.join(KINDS),
                   help='which of %s to run' % ', '.join(KINDS))
    p.add_argument('--from-json', metavar='PATH')
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(',') if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        p.error('unknown kinds: %s' % ', '.join(sorted(unknown)))
    if args.from_json:
        with open(args.from_json) as f:
            report(json.load(f), args.from_json)
        return 0
    sizes = [int(x) for x in args.sizes.split(',') if x]
    os.makedirs(args.workdir, exist_ok=True)
    progress = bs.Progress()
    svc = bs.Services(args.workdir, args.venv, args.virt_type, args.image_dir)
    floor = bs.Floor(args.workdir, args.image_dir, args.virt_type, progress)
    restore = RestoreFloor(floor, progress)
    result = {'started_at': time.time(), 'virt_type': args.virt_type, 'sizes': sizes,
              'repeat': args.repeat, 'kinds': kinds, 'memory_mb': args.memory_mb, 'cpus': os.cpu_count(),
              'runs': []}
    out = os.path.join(args.workdir, 'warm-boot.json')
    try:
        for n in sizes:
            for rep in range(args.repeat):
                steps = (
                    ('cold_floor', lambda: floor.run(n, args.memory_mb, args.ready_timeout)),
                    ('cold_agent', lambda: bs.storm(svc, n, args.memory_mb, args.ready_timeout,
                                                    progress, 'cold-n%d-r%d' % (n, rep))),
                    ('restore_floor', lambda: restore.run(n, args.memory_mb,
                                                          args.ready_timeout)),
                    ('warm_agent', lambda: warm_storm(svc, n, args.memory_mb,
                                                      args.ready_timeout, progress,
                                                      'warm-n%d-r%d' % (n, rep))),
                    ('resume_floor', lambda: restore.run(n, args.memory_mb,
                                                         args.ready_timeout, hot=True)),
                    ('hot_agent', lambda: warm_storm(svc, n, args.memory_mb,
                                                     args.ready_timeout, progress,
                                                     'hot-n%d-r%d' % (n, rep), hot=True)),
                    ('resume_rpc_floor', lambda: resume_rpc_floor(
                        svc, restore, n, args.memory_mb, args.ready_timeout,
                        'rpc-n%d-r%d' % (n, rep))))
                for kind, step in steps:
                    if kind not in kinds:
                        continue
                    r = step()
                    result['runs'].append({'kind': kind, 'n': n, 'rep': rep, **r})
                    progress.done('%s N=%d run %d: ready median %.2f s, max %.2f s (%d/%d)%s' % (
                        kind, n, rep + 1, bs.pct(list(r['ready_s'].values()), 0.5) or 0,
                        max(r['ready_s'].values(), default=0), len(r['ready_s']), n,
                        ', %d warm hits' % r['warm_hits'] if 'warm_hits' in r else ''))
                with open(out, 'w') as f:
                    json.dump(result, f, indent=1)
    finally:
        svc.close()
    report(result, out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
