#!/usr/bin/env python3
"""Real-guest benchmark: the Debian cloud image (tools/build-real-guest.sh) booted N at once,
three ways, one after the other, on one node; time from the request to ready.

- floor: N domains defined and started with raw libvirt-python from N threads (each on its
  own qcow2 overlay of the image, made beforehand, untimed; no seed, so cloud-init does
  nothing in them: a floor below any cold boot); ready = qemu-guest-agent's channel opens.
- cold agent: N boot_instance requests (host name, SSH key: a seed) released at once;
  ready = the instance's ``ready_at`` (the guest agent's channel), then "itself" = when
  ``cloud-init status --wait`` returns in the guest (read through the guest agent).
- warm agent: an agent whose cloud-init pool holds N saved spares (made by its filler,
  untimed) gets N boot_instance requests naming the pool, with host name and key; ready =
  ``ready_at``, which comes only after the clock was set and cloud-init ran on the
  instance's seed: ready is "itself". Each instance's host name, clock and key are checked.

Every guest: 1 vCPU, 1 GiB, a 2 GiB root disk over the image, direct kernel boot. Output: a
table and a JSON file (every run, medians, ratios to the floor).

  .tox/functional/bin/python tools/bench_real_guest.py --sizes 1,5 --json real-guest.json
"""
import argparse
import base64
import concurrent.futures
import json
import os
import statistics
import struct
import subprocess
import sys
import time
import uuid as uuidlib

import libvirt
import libvirt_qemu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_boot_storm as bs  # noqa: E402
from agent.virt.libvirt import config as vconfig  # noqa: E402

CMDLINE = 'root=/dev/vda console=ttyS0 quiet no_timer_check'
FLAVOR = {'vcpus': 1, 'memory_mb': 1024, 'image': 'debian-real.raw', 'disk_gb': 2,
          'kernel': 'debian-real-vmlinuz', 'initrd': 'debian-real-initrd.img',
          'cmdline': CMDLINE}
POOL = ('[warm]\npools = real\nquiet_seconds = 0.5\nready_timeout = 900\n'
        '[warm_pool:real]\nsize = %d\nidentity = cloud-init\nidentity_timeout = 1800\n' +
        ''.join('%s = %s\n' % kv for kv in FLAVOR.items()))
BASE = '[resources]\ncpu_allocation_ratio = 64\n'


def ssh_key() -> str:
    kind = b'ssh-ed25519'
    blob = struct.pack('>I', len(kind)) + kind + struct.pack('>I', 32) + os.urandom(32)
    return 'ssh-ed25519 %s bench@node' % base64.b64encode(blob).decode()


def agent(dom, command: str, arguments: dict | None = None):
    request = {'execute': command}
    if arguments is not None:
        request['arguments'] = arguments
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), 60, 0))['return']


def run_in_guest(dom, argv: list[str], timeout: float = 900.0) -> tuple[int, str, float]:
    """(exit code, output, monotonic time it was seen exited), by guest-exec."""
    pid = agent(dom, 'guest-exec', {'path': argv[0], 'arg': argv[1:],
                                    'capture-output': True})['pid']
    deadline = time.monotonic() + timeout
    while True:
        status = agent(dom, 'guest-exec-status', {'pid': pid})
        if status['exited']:
            out = base64.b64decode(status.get('out-data', '')).decode(errors='replace')
            return status.get('exitcode', -1), out, time.monotonic()
        if time.monotonic() > deadline:
            return -1, 'timed out', time.monotonic()
        time.sleep(0.25)


class RealFloor(bs.Floor):
    """The cold floor with the real guest: its own overlay per domain, no NIC, no seed."""

    def _xml(self, uuid: str, index: int, memory_mb: int) -> str:
        image = os.path.join(self.image_dir, FLAVOR['image'])
        overlay = os.path.join(self.dir, uuid + '.qcow2')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', image, '-F', 'raw',
                        overlay, '%dG' % FLAVOR['disk_gb']], check=True)
        xml = vconfig.GuestConfig(
            uuid=uuid, name='floor', virt_type=self.virt_type, arch=self.arch, vcpus=1,
            memory_mb=memory_mb, console_log=os.path.join(self.dir, uuid + '.log'),
            kernel=os.path.join(self.image_dir, FLAVOR['kernel']),
            initrd=os.path.join(self.image_dir, FLAVOR['initrd']), cmdline=CMDLINE,
            disks=(vconfig.DiskConfig(path=overlay, format='qcow2', backing=(image, 'raw')),)
        ).to_xml()
        return xml.replace('<name>%s' % vconfig.DOMAIN_PREFIX, '<name>bench-floor-', 1)

    def _remove(self, uuids):
        super()._remove(uuids)
        for uuid in uuids:
            try:
                os.unlink(os.path.join(self.dir, uuid + '.qcow2'))
            except FileNotFoundError:
                pass


def _start_agent(svc, run: str, overrides: str, progress) -> None:
    """A fresh agent; what an interrupted run left on the benchmark's node is deleted."""
    svc.start_agent(run, overrides)
    left = [i['uuid'] for i in svc.compute.list_instances(svc.host)]
    if left:
        progress.done('deleting %d instances an interrupted run left' % len(left))
        _delete(svc, left)


def _boot_all(svc, specs: list[dict], progress, what: str, ready_timeout: float) -> dict:
    t0, t0_wall, jobs = {}, {}, {}

    def boot(i):
        spec = specs[i]
        t0_wall[spec['uuid']], t0[spec['uuid']] = time.time(), time.monotonic()
        jobs[spec['uuid']] = svc.compute.boot_instance(svc.host, spec)['job_id']
    progress.show('%s: booting' % what, force=True)
    bs.released_at_once(len(specs), boot)
    rows = bs.wait_conductor(svc, list(jobs), ['active'], True,
                             time.monotonic() + ready_timeout, progress, what + ': ready')
    return {'t0': t0, 't0_wall': t0_wall, 'jobs': jobs, 'rows': rows}


def _delete(svc, uuids) -> None:
    for u in uuids:
        svc.compute.delete_instance(svc.host, u)
    svc.conductor.wait_instances(list(uuids), ['deleted'], 600)


def cold(svc, n: int, progress, ready_timeout: float) -> dict:
    _start_agent(svc, 'cold', BASE, progress)
    key = ssh_key()
    specs = [dict(FLAVOR, uuid=str(uuidlib.uuid4()), hostname='cold-%d' % i, ssh_keys=[key])
             for i in range(n)]
    run = _boot_all(svc, specs, progress, 'cold agent N=%d' % n, ready_timeout)
    rows, t0, t0_wall = run['rows'], run['t0'], run['t0_wall']
    conn = libvirt.open(bs.URI)
    try:
        def itself(uuid):
            dom = conn.lookupByUUIDString(uuid)
            code, out, seen = run_in_guest(dom, ['/usr/bin/cloud-init', 'status', '--wait'])
            return uuid, (seen - t0[uuid]) if code == 0 and 'done' in out else None
        progress.show('cold agent N=%d: cloud-init' % n, force=True)
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            done = dict(pool.map(itself, list(rows)))
    finally:
        conn.close()
    _delete(svc, list(run['jobs']))
    svc.stop('agent')
    return {'ready_s': {u: r['ready_at'] - t0_wall[u] for u, r in rows.items()},
            'itself_s': {u: s for u, s in done.items() if s is not None}}


def warm(svc, n: int, progress, ready_timeout: float) -> dict:
    _start_agent(svc, 'warm', BASE + POOL % n, progress)
    deadline = time.monotonic() + 300 * n + 300
    while True:
        have = svc.compute.get_stats(svc.host)['manager']['warm']['spares'].get('real', 0)
        if have >= n:
            break
        if time.monotonic() > deadline:
            raise SystemExit('the pool did not fill (%d of %d)' % (have, n))
        progress.show('warm agent N=%d: pool %d/%d' % (n, have, n))
        time.sleep(2)
    time.sleep(2.0)           # the filler is idle
    key = ssh_key()
    specs = [{'uuid': str(uuidlib.uuid4()), 'pool': 'real', 'hostname': 'warm-%d' % i,
              'ssh_keys': [key]} for i in range(n)]
    run = _boot_all(svc, specs, progress, 'warm agent N=%d' % n, ready_timeout)
    rows, t0_wall = run['rows'], run['t0_wall']
    results = {u: svc.compute.get_job(svc.host, j) for u, j in run['jobs'].items()}
    checks = {}
    conn = libvirt.open(bs.URI)
    try:
        for spec in specs:
            u = spec['uuid']
            if u not in rows:
                continue
            dom = conn.lookupByUUIDString(svc.compute.get_instance(svc.host, u)['domain'][3:])
            skew = agent(dom, 'guest-get-time') / 1e9 - time.time()
            host = run_in_guest(dom, ['/bin/hostname'])[1].strip()
            keys = run_in_guest(dom, ['/bin/cat', '/home/debian/.ssh/authorized_keys'])[1]
            checks[u] = {'clock_skew_s': round(skew, 3), 'hostname_ok': host == spec['hostname'],
                         'key_ok': key in keys.splitlines()}
    finally:
        conn.close()
    _delete(svc, list(run['jobs']))
    svc.stop('agent')
    return {'ready_s': {u: r['ready_at'] - t0_wall[u] for u, r in rows.items()},
            'hits': sum(j.get('result', '').startswith('warm: hit') for j in results.values()),
            'calls': [j['libvirt_calls_by_op'] for j in results.values()],
            'checks': checks}


def med(values) -> float | None:
    values = list(values)
    return round(statistics.median(values), 2) if values else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', default='1,5,10')
    p.add_argument('--ready-timeout', type=float, default=1800.0)
    p.add_argument('--workdir', default='/var/lib/compute-agent/bench-real')
    p.add_argument('--venv', default=os.path.join(bs.TOP, '.tox', 'functional'))
    p.add_argument('--image-dir', default='/var/lib/compute-agent/images')
    p.add_argument('--virt-type', default='qemu')
    p.add_argument('--json', default='real-guest.json')
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    progress = bs.Progress()
    svc = bs.Services(args.workdir, args.venv, args.virt_type, args.image_dir)
    floor = RealFloor(args.workdir, args.image_dir, args.virt_type, progress)
    out = {'date': time.strftime('%Y-%m-%d'), 'cpus': os.cpu_count(), 'flavor': FLAVOR,
           'runs': {}, 'summary': []}
    try:
        for n in [int(x) for x in args.sizes.split(',')]:
            runs = out['runs'][n] = {}
            runs['floor'] = floor.run(n, FLAVOR['memory_mb'], args.ready_timeout)
            runs['cold'] = cold(svc, n, progress, args.ready_timeout)
            runs['warm'] = warm(svc, n, progress, args.ready_timeout)
            f = med(runs['floor']['ready_s'].values())
            s = {'n': n, 'floor_ready_s': f,
                 'cold_ready_s': med(runs['cold']['ready_s'].values()),
                 'cold_itself_s': med(runs['cold']['itself_s'].values()),
                 'warm_ready_s': med(runs['warm']['ready_s'].values()),
                 'warm_max_s': round(max(runs['warm']['ready_s'].values()), 2),
                 'warm_hits': runs['warm']['hits'],
                 'checks_ok': all(c['hostname_ok'] and c['key_ok'] and abs(c['clock_skew_s']) < 5
                                  for c in runs['warm']['checks'].values())
                 and len(runs['warm']['checks']) == n}
            s['warm_over_floor'] = round(s['warm_ready_s'] / f, 3) if f else None
            s['warm_over_cold_itself'] = round(s['warm_ready_s'] / s['cold_itself_s'], 3) \
                if s['cold_itself_s'] else None
            out['summary'].append(s)
            progress.done(json.dumps(s))
            with open(args.json, 'w') as fh:
                json.dump(out, fh, indent=1, default=str)
    finally:
        svc.close()
    print('N   floor ready  cold ready  cold itself  warm ready(=itself)  warm/floor  '
          'warm/cold itself  checks')
    for s in out['summary']:
        print('%-3d %10s  %10s  %11s  %19s  %10s  %16s  %s' % (
            s['n'], s['floor_ready_s'], s['cold_ready_s'], s['cold_itself_s'],
            s['warm_ready_s'], s['warm_over_floor'], s['warm_over_cold_itself'],
            'ok' if s['checks_ok'] else 'FAILED'))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
