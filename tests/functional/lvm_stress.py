"""Stress of the agent's LVM path under eventlet, run as its own process by test_storage.py.

Monkey-patched exactly like the agent, it drives the agent's own CommandRunner and LvmBackend
on the green work queue from N concurrent greenthreads: each creates its LV, asks ``lvs`` for
it and for its tags, reads the shared sweep, and removes it. Prints one JSON line:
{"n", "ok", "errors": [...], "leftover_lvs", "seconds", "hub_ticks"}.
"""
import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import uuid as uuidlib  # noqa: E402

from agent import workqueue  # noqa: E402
from agent.storage import commands  # noqa: E402
from agent.storage import lvm  # noqa: E402
from agent.storage import lvm_report  # noqa: E402
from agent.storage import operations  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--vg', required=True)
    p.add_argument('--lvm-system-dir', required=True)
    p.add_argument('-n', type=int, default=120)
    p.add_argument('--threads', type=int, default=16)
    args = p.parse_args()
    wq = workqueue.GreenWorkQueue(args.threads)
    runner = commands.CommandRunner(wq, operations.Policy(volume_group=args.vg),
                                    env={'LVM_SYSTEM_DIR': args.lvm_system_dir})
    backend = lvm.LvmBackend(runner, args.vg, cache_seconds=0.2)
    errors = []

    def one(i: int) -> bool:
        uuid = str(uuidlib.UUID(int=(0xCA << 120) + i))
        try:
            backend.create_root_disk(uuid, 4 * 1024 * 1024, None)
            res = runner.check('lvs', {'vg': args.vg})    # its own listing, not the sweep's
            mine = [lv for lv in lvm_report.parse_lvs(res.stdout) if lv.name == lvm.lv_name(uuid)]
            if len(mine) != 1 or 'ca-instance-' + uuid not in mine[0].tags:
                errors.append('%d: got %r' % (i, mine))
                return False
            if backend.disks()[uuid].size != 4 * 1024 * 1024:
                errors.append('%d: wrong size in the sweep' % i)
                return False
            backend.delete_disks(uuid)
            return True
        except Exception as exc:
            errors.append('%d: %s' % (i, exc))
            return False

    ticks = [0]

    def ticker():
        while True:
            ticks[0] += 1
            eventlet.sleep(0.01)
    eventlet.spawn_n(ticker)
    start = time.monotonic()
    ok = list(eventlet.GreenPool(args.n).imap(one, range(args.n)))
    seconds = time.monotonic() - start
    listing = runner.check('lvs', {'vg': args.vg}).stdout
    leftover = [lv.name for lv in lvm_report.parse_lvs(listing)]
    runner.shutdown()
    print(json.dumps({'n': args.n, 'ok': sum(ok), 'errors': errors[:10], 'leftover_lvs': leftover,
                      'seconds': round(seconds, 3), 'hub_ticks': ticks[0],
                      'launches': dict(runner.launches)}))


if __name__ == '__main__':
    main()
