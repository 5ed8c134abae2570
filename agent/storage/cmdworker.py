"""A storage command worker: a plain Python process that runs named storage operations
through ``sh``.

The agent is an eventlet process, where ``sh`` loses output or hangs (its threads, locks and
select become green). So ``sh`` runs only here, in a process that never imports eventlet: one
request at a time, read as a JSON line on stdin, answered as a JSON line on stdout. It runs
only the operations of ``agent.storage.operations``, checked against the policy it was
started with (never an argv from the request), and kills a command that runs longer than
``--timeout`` seconds.

  request:  {"op": "lv_create", "args": {"vg": "vg0", "uuid": "...", "size": 1073741824}}
  answer:   {"rc": 0, "stdout": "...", "stderr": "...", "run_s": 0.007}
            before it, a long operation (image_fetch) may write progress lines:
            {"progress": 104857600, "total": 2147483648}
            rc 124: timed out (killed); 125: refused by the policy; 126: could not run;
            127: command not found
It exits quietly when the agent is gone (stdin closed, or its answer cannot be written).
"""
import argparse
import json
import os
import sys
import time

from agent.storage import operations


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='agent.storage.cmdworker')
    p.add_argument('--volume-group')
    p.add_argument('--image-dir')
    p.add_argument('--instances-path')
    p.add_argument('--cache-dir')
    p.add_argument('--image-source', action='append', default=[])
    p.add_argument('--timeout', type=float, default=600.0)
    return p


def policy_from_args(args: argparse.Namespace) -> operations.Policy:
    return operations.Policy(volume_group=args.volume_group, image_dir=args.image_dir,
                             instances_path=args.instances_path, cache_dir=args.cache_dir,
                             image_sources=tuple(args.image_source))


def run_one(sh, req, policy: operations.Policy, env: dict, timeout: float,
            emit=lambda done, total: None) -> dict:
    """Run one request; the answer (never an exception). ``emit(done, total)``: progress
    of a long one."""
    if req.get('op') == operations.FETCH:
        from agent.storage import fetch
        return fetch.run(req.get('args') if isinstance(req.get('args'), dict) else {},
                         policy, emit)
    try:
        argv = operations.build(req.get('op'), req.get('args'), policy)
    except (operations.Refused, AttributeError) as exc:
        return {'rc': 125, 'stdout': '', 'stderr': 'refused: %s' % exc}
    try:
        cmd = sh.Command(argv[0], search_paths=env.get('PATH', '').split(':'))
        res = cmd(*argv[1:], _env=env, _ok_code=list(range(256)), _return_cmd=True,
                  _tty_out=False, _decode_errors='replace', _timeout=timeout)
        return {'rc': res.exit_code, 'stdout': res.stdout.decode('utf-8', 'replace'),
                'stderr': res.stderr.decode('utf-8', 'replace')}
    except sh.TimeoutException:
        return {'rc': 124, 'stdout': '', 'stderr': '%s timed out after %g s and was killed'
                % (argv[0], timeout)}
    except sh.CommandNotFound:
        return {'rc': 127, 'stdout': '', 'stderr': 'command not found: %s' % argv[0]}
    except Exception as exc:   # report, never die: the agent reads one answer per request
        return {'rc': 126, 'stdout': '', 'stderr': '%s: %s' % (type(exc).__name__, exc)}


def main(argv=None) -> int:
    assert 'eventlet' not in sys.modules, 'the command worker must not load eventlet'
    import sh
    args = parser().parse_args(argv)
    policy = policy_from_args(args)
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS='1', LC_ALL='C')
    out = sys.stdout

    def emit(done: int, total: int) -> None:
        out.write(json.dumps({'progress': done, 'total': total}) + '\n')
        out.flush()
    try:
        for line in sys.stdin:
            start = time.monotonic()
            try:
                req = json.loads(line)
                answer = run_one(sh, req if isinstance(req, dict) else {}, policy, env,
                                 args.timeout, emit)
            except ValueError:
                answer = {'rc': 125, 'stdout': '', 'stderr': 'refused: not a JSON request'}
            answer['run_s'] = time.monotonic() - start
            out.write(json.dumps(answer) + '\n')
            out.flush()
    except (BrokenPipeError, KeyboardInterrupt):
        # The agent is gone: leave at once, without flushing into a closed pipe.
        os._exit(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
