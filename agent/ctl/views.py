"""compute-ctl's views of one agent: job, console, stats, storage, trace."""
import sys

from agent import ctl


def cmd_job(args, compute, conductor) -> int:
    ctl.print_json(compute.get_job(args.host, args.job_id))
    return 0


def cmd_console(args, compute, conductor) -> int:
    sys.stdout.write(compute.get_console_output(args.host, args.uuid, args.max_bytes)['output'])
    return 0


def cmd_stats(args, compute, conductor) -> int:
    ctl.print_json(compute.get_stats(args.host))
    return 0


def cmd_storage(args, compute, conductor) -> int:
    ctl.print_json(compute.get_storage(args.host))
    return 0


def cmd_trace(args, compute, conductor) -> int:
    written = compute.write_trace(args.host)
    if not written.get('enabled'):
        print('error: tracing is off on %s: set [trace] path and restart the agent'
              % args.host, file=sys.stderr)
        return 1
    ctl.print_json(written)
    return 0
