#!/usr/bin/env python3
"""Benchmark: the agent's LVM path against the same work done per LV.

Runs as root on a throw-away loop-backed VG it creates and removes:
  agent   N concurrent disk creates through the agent's code (eventlet, the global work queue,
          sh in command workers), then N concurrent "what disk does instance X have?"
          questions answered by the shared sweep, then N concurrent removes;
  per-LV  the same creates, questions (one `lvs VG/LV` each, as Ganeti did before batching)
          and removes with plain subprocess calls one after another;
  floor   one raw `lvs VG` for the whole VG.
Prints a table and writes JSON (--json).

  .venv/bin/python tools/bench_lvm.py -n 50 --json bench-lvm.json
"""
import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid as uuidlib  # noqa: E402

from agent import workqueue  # noqa: E402
from agent.storage import commands  # noqa: E402
from agent.storage import lvm  # noqa: E402
from agent.storage import operations  # noqa: E402

MiB = 1024 * 1024


class TempVG:
    def __init__(self, workdir):
        self.name = 'bench%s' % uuidlib.uuid4().hex[:6]
        self.conf = os.path.join(workdir, 'lvm')
        os.makedirs(self.conf)
        has_dm = 'device-mapper' in open('/proc/misc').read()
        with open(os.path.join(self.conf, 'lvm.conf'), 'w') as f:
            f.write('global {\n use_aio = 0\n activation = %d\n}\n' % has_dm)
        self.file = os.path.join(workdir, 'pv.img')
        subprocess.run(['truncate', '-s', '8G', self.file], check=True)
        self.loop = subprocess.run(['losetup', '-f', '--show', self.file], check=True,
                                   capture_output=True, text=True).stdout.strip()
        self.env = dict(os.environ, LVM_SYSTEM_DIR=self.conf, LVM_SUPPRESS_FD_WARNINGS='1')
        self.raw('pvcreate', '-q', self.loop)
        self.raw('vgcreate', '-q', self.name, self.loop)

    def raw(self, *argv):
        return subprocess.run(list(argv), env=self.env, check=True, capture_output=True, text=True)

    def destroy(self):
        subprocess.run(['vgremove', '-q', '-f', self.name], env=self.env, capture_output=True)
        subprocess.run(['pvremove', '-q', '-f', self.loop], env=self.env, capture_output=True)
        subprocess.run(['losetup', '-d', self.loop])
        os.unlink(self.file)


def timed(fn):
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def bench(vg: TempVG, n: int, threads: int) -> dict:
    uuids = [str(uuidlib.uuid4()) for _ in range(n)]
    wq = workqueue.GreenWorkQueue(threads)
    runner = commands.CommandRunner(wq, operations.Policy(volume_group=vg.name),
                                    env={'LVM_SYSTEM_DIR': vg.conf})
    backend = lvm.LvmBackend(runner, vg.name, cache_seconds=60)
    pool = eventlet.GreenPool(n)
    runner.run('vgs', {'vg': vg.name})   # start one worker before timing, as an agent has them
    out = {'n': n, 'threads': threads}

    out['agent_create_s'] = timed(lambda: list(pool.imap(
        lambda u: backend.create_root_disk(u, 4 * MiB, None), uuids)))
    lvs_before = runner.launches['lvs']
    out['agent_sweep_s'] = timed(lambda: list(pool.imap(lambda u: backend.disks()[u], uuids)))
    out['agent_sweep_lvs'] = runner.launches['lvs'] - lvs_before
    out['agent_remove_s'] = timed(lambda: list(pool.imap(backend.delete_disks, uuids)))
    runner.shutdown()

    names = ['raw%d' % i for i in range(n)]
    out['perlv_create_s'] = timed(lambda: [vg.raw('lvcreate', '-q', '-y', '-n', nm, '-L', '4m',
                                                  vg.name) for nm in names])
    out['perlv_sweep_s'] = timed(lambda: [vg.raw('lvs', '--noheadings', '%s/%s' % (vg.name, nm))
                                          for nm in names])
    out['floor_one_lvs_s'] = timed(lambda: vg.raw('lvs', '--noheadings', vg.name))
    out['perlv_remove_s'] = timed(lambda: [vg.raw('lvremove', '-q', '-y', '%s/%s' % (vg.name, nm))
                                           for nm in names])
    out['sweep_speedup'] = round(out['perlv_sweep_s'] / out['agent_sweep_s'], 1)
    out['create_speedup'] = round(out['perlv_create_s'] / out['agent_create_s'], 2)
    out['sweep_vs_floor'] = round(out['agent_sweep_s'] / out['floor_one_lvs_s'], 2)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('-n', type=int, default=50)
    p.add_argument('--threads', type=int, default=8, help='work-queue threads')
    p.add_argument('--json', help='write the results here')
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        vg = TempVG(workdir)
        try:
            r = bench(vg, args.n, args.threads)
        finally:
            vg.destroy()
    print('N=%d LVs, %d work-queue threads' % (r['n'], r['threads']))
    print('%-34s %10s %10s %8s' % ('', 'agent', 'per-LV', 'ratio'))
    print('%-34s %9.3fs %9.3fs %7.2fx' % ('create N disks', r['agent_create_s'],
                                          r['perlv_create_s'], r['create_speedup']))
    print('%-34s %9.3fs %9.3fs %7.1fx' % ('answer N "which disk" questions', r['agent_sweep_s'],
                                          r['perlv_sweep_s'], r['sweep_speedup']))
    print('%-34s %9.3fs %9.3fs' % ('remove N disks', r['agent_remove_s'], r['perlv_remove_s']))
    print('lvs processes for the N questions: %d (per-LV: %d); one raw lvs of the VG: %.4fs '
          '(sweep = %.2fx that floor)' % (r['agent_sweep_lvs'], r['n'], r['floor_one_lvs_s'],
                                          r['sweep_vs_floor']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(r, f, indent=2)


if __name__ == '__main__':
    main()
