"""compute-ctl's other instance commands: delete, stop / start / reboot, list, show,
resources, wait."""
import sys
import time

from agent import ctl
from agent import exception


def add_delete_parser(sub) -> None:
    d = sub.add_parser('delete', help='delete instances')
    d.add_argument('uuids', nargs='+')
    d.add_argument('--wait', action='store_true')
    d.add_argument('--timeout', type=float, default=120.0)


def add_power_parsers(sub) -> None:
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
            print('%s %s refused: %s' % (args.cmd, uuid, ctl.message(exc)), file=sys.stderr)
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
        view['agent'] = ctl.message(exc)
    ctl.print_json(view)
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
    ctl.print_json(view)
    return 0


def cmd_wait(args, compute, conductor) -> int:
    states = args.state or ['active']
    rows = conductor.wait_instances(args.uuids, states, args.timeout, ready=args.ready)
    ctl.print_json(rows)
    return 0 if all(r and r['vm_state'] in states and (not args.ready or r['readiness'] == 'ready')
                    for r in rows.values()) else 1
