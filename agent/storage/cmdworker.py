"""A storage command worker: a plain Python process that runs commands through ``sh``.

The agent is an eventlet process, where ``sh`` loses output or hangs (its threads, locks and
select become green). So ``sh`` runs only here, in a process that never imports eventlet: one
request at a time, read as a JSON line on stdin, answered as a JSON line on stdout.

  request:  {"argv": ["lvs", ...], "env": {"LVM_SYSTEM_DIR": ...}}
  answer:   {"rc": 0, "stdout": "...", "stderr": "...", "run_s": 0.007}
            or {"rc": 127, "stdout": "", "stderr": "command not found: x", "run_s": 0.0}
"""
import json
import os
import sys
import time


def main() -> int:
    assert 'eventlet' not in sys.modules, 'the command worker must not load eventlet'
    import sh
    base_env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS='1', LC_ALL='C')
    ok_codes = list(range(256))
    out = sys.stdout
    for line in sys.stdin:
        req = json.loads(line)
        env = dict(base_env, **req.get('env', {}))
        start = time.monotonic()
        try:
            cmd = sh.Command(req['argv'][0], search_paths=env.get('PATH', '').split(':'))
            res = cmd(*req['argv'][1:], _env=env, _ok_code=ok_codes, _return_cmd=True,
                      _tty_out=False, _decode_errors='replace')
            answer = {'rc': res.exit_code, 'stdout': res.stdout.decode('utf-8', 'replace'),
                      'stderr': res.stderr.decode('utf-8', 'replace')}
        except sh.CommandNotFound:
            answer = {'rc': 127, 'stdout': '', 'stderr': 'command not found: %s' % req['argv'][0]}
        except Exception as exc:   # report, never die: the agent reads one answer per request
            answer = {'rc': 126, 'stdout': '', 'stderr': '%s: %s' % (type(exc).__name__, exc)}
        answer['run_s'] = time.monotonic() - start
        out.write(json.dumps(answer) + '\n')
        out.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main())
