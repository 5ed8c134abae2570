"""compute-ctl: a client for the agents' RPC API and the conductor's view.

  compute-ctl boot --kernel test-vmlinuz --initrd test-initrd.img --count 5 --wait
  compute-ctl boot ... --wait --ready   (also wait until each guest is ready)
  compute-ctl list | show UUID | job JOB_ID | delete UUID... [--wait] | stats | storage
  compute-ctl wait UUID... [--state S] [--ready]
  compute-ctl stop UUID... [--timeout S] [--wait] | start UUID... [--wait] |
              reboot UUID... [--hard] [--wait]
  compute-ctl console UUID [--max-bytes N]   (the tail of its serial console log)
  compute-ctl trace       (write the agent's Chrome trace to its [trace] path)
"""
import argparse
import concurrent.futures
import json
import sys
import time
import uuid as uuidlib

import oslo_messaging

from agent import conf
from agent import exception
from agent import rpc
from agent.conductor import api as conductor_api
from agent.rpc import api as compute_api

FINAL_BOOT_STATES = ['active', 'error', 'stopped']


def _add_boot(sub) -> None:
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


def _add_power(sub) -> None:
    for name, text in (('stop', 'stop instances: the ACPI power button, then at once'),
                       ('start', 'start stopped instances'),
                       ('reboot', 'reboot instances (soft by ACPI; --hard: a reset)')):
        op = sub.add_parser(name, help=text)
        op.add_argument('uuids', nargs='+')
        op.add_argument('--wait', action='store_true', help='wait until every job has ended')
        op.add_argument('--wait-timeout', type=float, default=900.0)
        if name == 'stop':
            op.add_argument('--timeout', type=int, default=None,
                            help="seconds for the guest to power off (default: the node's "
                                 '[power] stop_timeout; 0: at once)')
        if name == 'reboot':
            op.add_argument('--hard', action='store_true')


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='compute-ctl', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config-file', action='append', default=[],
                   help='oslo.config file(s) with transport_url, host and [conductor] topic')
    p.add_argument('--host', help='the node to talk to (default: [DEFAULT] host)')
    p.add_argument('--rpc-timeout', type=int, default=30,
                   help='seconds to wait for an answer (waits add their own timeout)')
    sub = p.add_subparsers(dest='cmd', required=True)

    _add_boot(sub)
    d = sub.add_parser('delete', help='delete instances')
    d.add_argument('uuids', nargs='+')
    d.add_argument('--wait', action='store_true')
    d.add_argument('--timeout', type=float, default=120.0)

    _add_power(sub)
    sub.add_parser('list', help="the conductor's view of this node's instances")
    s = sub.add_parser('show', help="one instance: the conductor's and the agent's view")
    s.add_argument('uuid')
    j = sub.add_parser('job', help='one job, from the agent')
    j.add_argument('job_id')
    w = sub.add_parser('wait', help='wait until instances reach a state (conductor view)')
    w.add_argument('uuids', nargs='+')
    w.add_argument('--state', action='append', default=None)
    w.add_argument('--ready', action='store_true',
                   help='also wait until each guest is ready (opened its agent channel)')
    w.add_argument('--timeout', type=float, default=300.0)
    c = sub.add_parser('console', help="the tail of an instance's serial console log")
    c.add_argument('uuid')
    c.add_argument('--max-bytes', type=int, default=None)
    sub.add_parser('stats', help="the agent's counters")
    sub.add_parser('storage', help="the agent's storage capacity and disks (one shared listing)")
    sub.add_parser('trace', help="write the agent's Chrome trace so far to its [trace] path")
    r = sub.add_parser('resources', help="capacity and usage: the agent's and the conductor's view")
    r.add_argument('--audit', action='store_true',
                   help='run a resource audit on the agent first (prints what it corrected)')
    return p


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


def _message(exc: Exception) -> str:
    # A remote exception's str() carries the server's traceback; its first arg is the message.
    return exc.args[0] if exc.args else str(exc)


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def cmd_boot(args, compute, conductor) -> int:
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
                print('refused: %s' % _message(exc), file=sys.stderr)
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


def cmd_delete(args, compute, conductor) -> int:
    held = []
    for uuid in args.uuids:
        result = compute.delete_instance(args.host, uuid)
        if result['job_id'] is None:
            print('delete %s: this node holds no such instance; nothing to delete' % uuid)
            continue
        held.append(uuid)
        print('delete %s job %s%s' % (uuid, result['job_id'],
                                      ' (already being deleted)' if result.get('existing') else ''))
    if args.wait and held:
        rows = conductor.wait_instances(held, ['deleted'], args.timeout)
        left = [u for u, r in rows.items() if r and r['vm_state'] != 'deleted']
        if left:
            print('not deleted in time: %s' % ' '.join(left), file=sys.stderr)
            return 1
    return 0


def _power_request(args, compute, uuid: str) -> dict:
    if args.cmd == 'stop':
        return compute.stop_instance(args.host, uuid, args.timeout)
    if args.cmd == 'start':
        return compute.start_instance(args.host, uuid)
    return compute.reboot_instance(args.host, uuid, args.hard)


def cmd_power(args, compute, conductor) -> int:
    """stop / start / reboot: one request per uuid; with --wait, until each job ended."""
    jobs = {}
    failed = 0
    for uuid in args.uuids:
        try:
            result = _power_request(args, compute, uuid)
        except exception.AgentError as exc:
            print('%s %s refused: %s' % (args.cmd, uuid, _message(exc)), file=sys.stderr)
            failed += 1
            continue
        jobs[uuid] = result['job_id']
        print('%s %s job %s%s' % (args.cmd, uuid, result['job_id'],
                                  ' (already under way)' if result.get('existing') else ''))
    deadline = time.monotonic() + args.wait_timeout
    while args.wait and jobs:
        for uuid, job_id in list(jobs.items()):
            job = compute.get_job(args.host, job_id)
            if job['state'] in ('done', 'failed'):
                del jobs[uuid]
                failed += job['state'] == 'failed'
                print('%s %s: %s %s (%d libvirt calls)' % (
                    args.cmd, uuid, job['state'], job['reason'] or job['result'] or '',
                    job['libvirt_calls']))
        if jobs and time.monotonic() > deadline:
            print('not ended in time: %s' % ' '.join(jobs), file=sys.stderr)
            return 1
        time.sleep(0.25 if jobs else 0)
    return 1 if failed else 0


cmd_stop = cmd_start = cmd_reboot = cmd_power


def cmd_list(args, compute, conductor) -> int:
    rows = [r for r in conductor.list_instances(args.host) if r['vm_state'] != 'deleted']
    print('%-36s  %-20s  %-9s  %-9s  %-9s  %s' % ('uuid', 'name', 'vm_state', 'power',
                                                  'readiness', 'fault'))
    for r in rows:
        print('%-36s  %-20s  %-9s  %-9s  %-9s  %s' % (r['uuid'], r['name'], r['vm_state'],
                                                      r['power_state'], r['readiness'] or '-',
                                                      r['fault'] or ''))
    return 0


def cmd_show(args, compute, conductor) -> int:
    view = {'conductor': conductor.get_instance(args.uuid)}
    try:
        view['agent'] = compute.get_instance(args.host, args.uuid)
    except exception.InstanceNotFound as exc:
        view['agent'] = _message(exc)
    _print_json(view)
    return 0


def cmd_resources(args, compute, conductor) -> int:
    view = {}
    if args.audit:
        view['audit_corrected'] = compute.audit_resources(args.host)
    agent = compute.get_resources(args.host)
    node = conductor.get_node(args.host)
    view.update(agent=agent, conductor=node,
                in_agreement=bool(node) and all(node[k] == agent.get(k) for k in
                                                ('generation', 'capacity', 'usage')))
    _print_json(view)
    return 0


def cmd_wait(args, compute, conductor) -> int:
    states = args.state or ['active']
    rows = conductor.wait_instances(args.uuids, states, args.timeout, ready=args.ready)
    _print_json(rows)
    return 0 if all(r and r['vm_state'] in states and (not args.ready or r['readiness'] == 'ready')
                    for r in rows.values()) else 1


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    conf_args = []
    for f in args.config_file:
        conf_args += ['--config-file', f]
    conf.CONF(conf_args, project='compute-agent', default_config_files=[] if conf_args else None)
    args.host = args.host or conf.CONF.host
    transport = rpc.get_transport(conf.CONF)
    nodes = rpc.node_transports(conf.CONF)
    compute = compute_api.ComputeAPI(nodes, timeout=args.rpc_timeout,
                                     version_cap=conf.CONF.upgrade_levels.compute)
    conductor = conductor_api.ConductorAPI(transport, conf.CONF.conductor.topic,
                                           timeout=args.rpc_timeout)
    try:
        if args.cmd == 'job':
            _print_json(compute.get_job(args.host, args.job_id))
            return 0
        if args.cmd == 'console':
            tail = compute.get_console_output(args.host, args.uuid, args.max_bytes)
            sys.stdout.write(tail['output'])
            return 0
        if args.cmd == 'stats':
            _print_json(compute.get_stats(args.host))
            return 0
        if args.cmd == 'storage':
            _print_json(compute.get_storage(args.host))
            return 0
        if args.cmd == 'trace':
            written = compute.write_trace(args.host)
            if not written.get('enabled'):
                print('error: tracing is off on %s: set [trace] path and restart the agent'
                      % args.host, file=sys.stderr)
                return 1
            _print_json(written)
            return 0
        return globals()['cmd_' + args.cmd](args, compute, conductor)
    except exception.AgentError as exc:
        print('error: %s' % _message(exc), file=sys.stderr)
        return 1
    except oslo_messaging.MessagingTimeout:
        print('error: no answer within %ss: is the agent of node %r (topic compute) and the '
              'conductor (topic %r) running?' % (args.rpc_timeout, args.host,
                                                 conf.CONF.conductor.topic), file=sys.stderr)
        return 1
    finally:
        nodes.cleanup()
        transport.cleanup()


if __name__ == '__main__':
    sys.exit(main())
