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
import sys

import oslo_messaging

from agent import conf
from agent import ctl
from agent import exception
from agent import rpc
from agent.conductor import api as conductor_api
from agent.ctl import boot
from agent.ctl import instances
from agent.ctl import views
from agent.rpc import api as compute_api

COMMANDS = {'boot': boot.run, 'delete': instances.cmd_delete, 'stop': instances.cmd_power,
            'start': instances.cmd_power, 'reboot': instances.cmd_power,
            'list': instances.cmd_list, 'show': instances.cmd_show,
            'resources': instances.cmd_resources, 'wait': instances.cmd_wait,
            'job': views.cmd_job, 'console': views.cmd_console, 'stats': views.cmd_stats,
            'storage': views.cmd_storage, 'trace': views.cmd_trace}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='compute-ctl', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config-file', action='append', default=[],
                   help='oslo.config file(s) with transport_url, host and [conductor] topic')
    p.add_argument('--host', help='the node to talk to (default: [DEFAULT] host)')
    p.add_argument('--rpc-timeout', type=int, default=30,
                   help='seconds to wait for an answer (waits add their own timeout)')
    sub = p.add_subparsers(dest='cmd', required=True)

    boot.add_parser(sub)
    instances.add_delete_parser(sub)
    instances.add_power_parsers(sub)
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
        return COMMANDS[args.cmd](args, compute, conductor)
    except exception.AgentError as exc:
        print('error: %s' % ctl.message(exc), file=sys.stderr)
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
