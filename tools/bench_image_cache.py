#!/usr/bin/env python3
"""Benchmark: per-boot disk preparation from the image cache, a small image against a large one.

Runs as root, through the agent's own code (the image cache, the file storage backend, real
command-worker processes running qemu-img) in a throw-away directory:
  first use  each image is downloaded once (file:// source) and verified: time and MiB/s;
  per boot   ``rounds`` times, alternating the two images: the cache hit (pin, check) and the
             root disk (a qcow2 overlay on the cached image), then its removal (not timed).
Prints a table with the median per-boot time of each size and their ratio; --json writes it.

  .tox/py3/bin/python tools/bench_image_cache.py --small-mb 200 --large-mb 2048 --rounds 20
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid as uuidlib

from agent import instancedir
from agent import spec as specmod
from agent import workqueue
from agent.storage import commands
from agent.storage import file as file_storage
from agent.storage import imagecache
from agent.storage import operations

MiB = 1024 * 1024


def make_image(path: str, size: int) -> str:
    """A raw image of ``size`` bytes with no holes (every block written); its sha256."""
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with open(path, 'wb') as f:
        left = size
        while left:
            chunk = block[:min(left, MiB)]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--small-mb', type=int, default=200)
    p.add_argument('--large-mb', type=int, default=2048)
    p.add_argument('--rounds', type=int, default=20)
    p.add_argument('--workdir', default='/var/tmp')
    p.add_argument('--json')
    args = p.parse_args()
    top = tempfile.mkdtemp(prefix='bench-image-cache-', dir=args.workdir)
    runtime = workqueue.native_runtime(4)
    runner = None
    try:
        store, cache, inst = (os.path.join(top, d) for d in ('store', 'cache', 'instances'))
        os.makedirs(store)
        source = 'file://%s/' % store
        dirs = instancedir.InstanceDirs(inst)
        runner = commands.CommandRunner(runtime.workqueue, operations.Policy(
            instances_path=inst, cache_dir=cache, image_sources=(source,)))
        backend = file_storage.FileBackend(runner, dirs)
        images = imagecache.ImageCache(runner, dirs, cache, (args.small_mb + args.large_mb + 1)
                                       * MiB, runtime.workqueue.execute)
        images.init()
        limits = specmod.Limits(image_dir=store, image_sources=(source,),
                                max_image_bytes=(args.large_mb + 1) * MiB)
        refs, first = {}, {}
        for label, mb in (('small', args.small_mb), ('large', args.large_mb)):
            name = '%s.raw' % label
            sha = make_image(os.path.join(store, name), mb * MiB)
            refs[label] = {'url': source + name, 'sha256': sha, 'size': mb * MiB}
            spec = specmod.validate_boot_spec({'uuid': str(uuidlib.uuid4()),
                                               'image_ref': refs[label], 'disk_gb': 4}, limits)
            start = time.monotonic()
            images.resolve(spec)
            first[label] = time.monotonic() - start
            images.unpin(spec.uuid)
        per_boot = {'small': [], 'large': []}
        for _ in range(args.rounds):
            for label in ('small', 'large'):
                spec = specmod.validate_boot_spec(
                    {'uuid': str(uuidlib.uuid4()), 'image_ref': refs[label], 'disk_gb': 4},
                    limits)
                start = time.monotonic()
                resolved = images.resolve(spec)
                backend.create_root_disk(spec.uuid, 4 << 30, resolved.image,
                                         resolved.image_format)
                per_boot[label].append(time.monotonic() - start)
                backend.delete_disks(spec.uuid)
                images.unpin(spec.uuid)
                dirs.remove(spec.uuid)
        med = {k: statistics.median(v) for k, v in per_boot.items()}
        result = {
            'sizes_mb': {'small': args.small_mb, 'large': args.large_mb},
            'rounds': args.rounds,
            'first_use_s': {k: round(v, 3) for k, v in first.items()},
            'first_use_mib_s': {k: round(refs[k]['size'] / MiB / first[k], 1) for k in first},
            'per_boot_median_ms': {k: round(v * 1000, 2) for k, v in med.items()},
            'per_boot_p90_ms': {k: round(sorted(v)[int(len(v) * 0.9) - 1] * 1000, 2)
                                for k, v in per_boot.items()},
            'large_over_small': round(med['large'] / med['small'], 3),
        }
        print('image      size MiB  first use (download+verify)   per boot median   p90')
        for k in ('small', 'large'):
            print('%-9s %9d  %8.2f s (%7.1f MiB/s)      %8.2f ms   %6.2f ms' % (
                k, result['sizes_mb'][k], first[k], result['first_use_mib_s'][k],
                result['per_boot_median_ms'][k], result['per_boot_p90_ms'][k]))
        print('per-boot preparation, large / small: %.3fx' % result['large_over_small'])
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(result, f, indent=1)
        return 0
    finally:
        if runner is not None:
            runner.shutdown()
        runtime.workqueue.shutdown()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == '__main__':
    raise SystemExit(main())
