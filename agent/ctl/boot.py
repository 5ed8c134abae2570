"""compute-ctl boot: N requests at once, then (--wait) a table of each boot's times."""
import concurrent.futures
import sys
import time
import uuid as uuidlib

from agent import ctl
from agent import exception

FINAL_BOOT_STATES = ['active', 'error', 'stopped']


def add_parser(sub) -> None:
    b = sub.add_parser('boot', help='boot instances (all requests are sent at once)')
    b.add_argument('--uuid', help='instance uuid (default: a new one; only with --count 1)')
    b.add_argument('--name')
    b.add_argument('--vcpus', type=int, help='default 1 (with --pool: the pool\'s)')
    b.add_argument('--memory-mb', type=int, help='default 128 (with --pool: the pool\'s)')
    b.add_argument('--pool', help='a warm pool of the node: restored from one of its saved '
                                  'spares (booted cold when it has none); the flavor is '
                                  'the pool\'s')
    b.add_argument('--image', help='an image in the node\'s image directory')
    b.add_argument('--image-url', help='an image from an image store (one of the node\'s '
                                       '[images] sources), downloaded once per node; with '
                                       '--image-sha256 and --image-size')
    b.add_argument('--image-sha256')
    b.add_argument('--image-size', type=int, help='bytes')
    b.add_argument('--kernel')
    b.add_argument('--initrd')
    b.add_argument('--cmdline')
    b.add_argument('--disk-gb', type=int, default=0, help='root disk from the storage backend')
    b.add_argument('--nic', action='append', default=[],
                   help='"user" or "bridge:NAME" (repeatable)')
    b.add_argument('--user-data', metavar='FILE', help='the guest\'s user data (cloud-init), '
                   'read from FILE (- for stdin)')
    b.add_argument('--ssh-key', metavar='FILE', action='append', default=[],
                   help='a file of OpenSSH public keys, one per line (repeatable)')
    b.add_argument('--hostname', help='the guest\'s host name (with --count: NAME-INDEX)')
    b.add_argument('--meta', metavar='KEY=VALUE', action='append', default=[],
                   help='metadata for the guest (repeatable)')
    b.add_argument('--count', type=int, default=1)
    b.add_argument('--wait', action='store_true', help='wait until every instance is active')
    b.add_argument('--ready', action='store_true',
                   help='with --wait: then until every active instance\'s guest is ready')
    b.add_argument('--timeout', type=float, default=300.0)


def _spec(args, uuid: str, index: int) -> dict:
    spec = {'uuid': uuid}
    for field in ('vcpus', 'memory_mb', 'pool'):
        if getattr(args, field) is not None:
            spec[field] = getattr(args, field)
    if args.disk_gb:
        spec['disk_gb'] = args.disk_gb
    if args.name:
        spec['name'] = args.name if args.count == 1 else '%s-%d' % (args.name, index)
    for field in ('image', 'kernel', 'initrd', 'cmdline'):
        if getattr(args, field):
            spec[field] = getattr(args, field)
    if args.image_url or args.image_sha256 or args.image_size:
        spec['image_ref'] = {'url': args.image_url, 'sha256': args.image_sha256,
                             'size': args.image_size}
    nics = []
    for nic in args.nic:
        kind, _, bridge = nic.partition(':')
        nics.append({'type': kind, 'bridge': bridge} if bridge else {'type': kind})
    if nics:
        spec['nics'] = nics
    if args.user_data_text is not None:
        spec['user_data'] = args.user_data_text
    if args.ssh_keys:
        spec['ssh_keys'] = args.ssh_keys
    if args.hostname:
        spec['hostname'] = args.hostname if args.count == 1 else '%s-%d' % (args.hostname, index)
    if args.meta:
        spec['meta'] = dict(item.partition('=')[::2] for item in args.meta)
    return spec


def run(args, compute, conductor) -> int:
    if args.uuid and args.count != 1:
        print('--uuid needs --count 1', file=sys.stderr)
        return 2
    uuids = [args.uuid or str(uuidlib.uuid4()) for _ in range(args.count)]
    args.user_data_text = None             # read once for every instance
    if args.user_data:
        with (sys.stdin if args.user_data == '-' else open(args.user_data)) as f:
            args.user_data_text = f.read()
    args.ssh_keys = []
    for path in args.ssh_key:
        with open(path) as f:
            args.ssh_keys += [line.strip() for line in f
                              if line.strip() and not line.startswith('#')]
    sent = {}

    def boot(i, uuid):
        sent[uuid] = time.time()
        result = compute.boot_instance(args.host, _spec(args, uuid, i))
        return uuid, result, time.time() - sent[uuid]

    answers = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(64, args.count)) as pool:
        futures = [pool.submit(boot, i, u) for i, u in enumerate(uuids)]
        for f in futures:
            try:
                uuid, result, rtt = f.result()
            except exception.AgentError as exc:
                print('refused: %s' % ctl.message(exc), file=sys.stderr)
                return 1
            answers[uuid] = (result, rtt)
            print('accepted %s job %s (%.1f ms)' % (uuid, result['job_id'], rtt * 1000))
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    rows = conductor.wait_instances(uuids, FINAL_BOOT_STATES, args.timeout)
    active = [u for u in uuids if (rows.get(u) or {}).get('vm_state') == 'active']
    if args.ready and active:
        rows.update(conductor.wait_instances(active, ['active'],
                                             max(1.0, deadline - time.monotonic()), ready=True))
    failed = _print_boots(uuids, rows, sent, answers, args.ready)
    if args.pool:
        # A warm boot's job ends after its guest is ready (it then makes the domain
        # persistent): its result exists only once the job ended.
        results = _job_results(compute, args.host, [answers[u][0]['job_id'] for u in uuids],
                               deadline)
        hot = sum(r.startswith('hot: hit') for r in results)
        warm = sum(r.startswith('warm: hit') for r in results)
        print('pool %s: %s%d warm (restored from saved spares), %d cold%s' % (
            args.pool, '%d hot (resumed), ' % hot if hot else '', warm,
            len(uuids) - hot - warm, ''.join(sorted(
                {' (%s)' % r for r in results if not r.startswith(('warm: hit', 'hot: hit'))}))))
    return failed


def _job_results(compute, host: str, job_ids: list[str], deadline: float) -> list[str]:
    """Each job's result once it ended (until ``deadline``; then what is known)."""
    results = {}
    while True:
        for job_id in job_ids:
            if job_id not in results:
                job = compute.get_job(host, job_id)
                if job['state'] in ('done', 'failed'):
                    results[job_id] = job.get('result') or job.get('reason') or ''
        if len(results) == len(job_ids) or time.monotonic() > deadline:
            return [results.get(j, 'job still running') for j in job_ids]
        time.sleep(0.1)


def _since(row: dict, key: str, sent: float) -> float | None:
    return row[key] - sent if row.get(key) else None


def _print_boots(uuids, rows: dict, sent: dict, answers: dict, ready: bool) -> int:
    """The boot table: state, answer time, times to active (and ready); 1 if any failed."""
    print()
    print('%-36s  %-10s  %10s  %14s  %13s  %s' % ('uuid', 'state', 'accept ms', 'to active (s)',
                                                  'to ready (s)', 'fault'))
    failed = 0
    for uuid in uuids:
        row = rows.get(uuid) or {}
        took = [_since(row, k, sent[uuid]) for k in ('active_at', 'ready_at')]
        failed += row.get('vm_state') != 'active' or (ready and took[1] is None)
        print('%-36s  %-10s  %10.1f  %14s  %13s  %s' % (
            uuid, row.get('vm_state', 'unknown'), answers[uuid][1] * 1000,
            *('-' if t is None else '%.3f' % t for t in took), row.get('fault') or ''))
    for key, what in (('active_at', 'active'), ('ready_at', 'ready')):
        times = sorted(t for t in (_since(rows.get(u) or {}, key, sent[u]) for u in uuids)
                       if t is not None)
        if times:
            print('%d/%d %s; time to %s: median %.3f s, max %.3f s'
                  % (len(times), len(uuids), what, what, times[len(times) // 2], times[-1]))
    return 1 if failed else 0
