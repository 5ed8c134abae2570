"""Running storage operations (LVM, qemu-img) from the agent, through ``sh``, safely.

``sh`` misbehaves inside an eventlet process (lost output, hangs). So every operation goes to
the global work queue. There the native worker thread hands it to its own command-worker
process (``agent.storage.cmdworker``), which runs it with ``sh`` and never imports eventlet.
The agent sends only an operation's name and arguments (``agent.storage.operations``); the
worker checks them against the policy it was started with and builds the command itself.
The pipes are driven with blocking ``io.FileIO`` calls from the native thread: no green I/O, no
green lock, and no greenthread ever waits on a subprocess.
"""
import collections
import dataclasses
import io
import json
import logging
import os
import sys
import time

from agent import exception
from agent.storage import operations

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """What a command did: exit status, stdout, stderr."""
    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    run_s: float


class _Worker:
    """One command-worker process; used by one native thread only."""

    def __init__(self, python: str, env: dict, args: list[str]):
        child_in, self._wfd = os.pipe()
        self._rfd, child_out = os.pipe()
        self.pid = os.posix_spawn(
            python, [python, '-m', 'agent.storage.cmdworker'] + args, env,
            file_actions=[(os.POSIX_SPAWN_DUP2, child_in, 0),
                          (os.POSIX_SPAWN_DUP2, child_out, 1)])
        os.close(child_in)
        os.close(child_out)
        self._w = io.FileIO(self._wfd, 'wb', closefd=True)
        self._r = io.BufferedReader(io.FileIO(self._rfd, 'rb', closefd=True))

    def call(self, request: dict, progress=None) -> dict:
        """The answer to ``request``; progress lines before it go to ``progress(line)``."""
        self._w.write((json.dumps(request) + '\n').encode())
        while True:
            line = self._r.readline()
            if not line:
                raise EOFError('command worker %d exited' % self.pid)
            answer = json.loads(line)
            if 'progress' not in answer:
                return answer
            if progress is not None:
                progress(answer)

    def close(self) -> None:
        for f in (self._w, self._r):
            try:
                f.close()
            except OSError:
                pass
        try:
            os.waitpid(self.pid, os.WNOHANG)
        except OSError:
            pass


class CommandRunner:
    """Runs storage operations on the work queue; counts launches per command name.

    policy: what the workers may touch (``operations.Policy``), fixed when each is started.
    env: extra environment of the workers (e.g. LVM_SYSTEM_DIR). timeout: seconds a command
    may run before the worker kills it.
    """

    def __init__(self, workqueue, policy: operations.Policy = operations.Policy(),
                 env: dict | None = None, timeout: float = 600.0, python: str = sys.executable,
                 worker_factory=None):
        self._wq = workqueue
        self._worker_factory = worker_factory or _Worker
        self._local = workqueue.thread_local()
        self._python = python
        self._spawn_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                               **(env or {}))
        self._spawn_args = ['--timeout', str(timeout)] + [
            flag for key, value in (('--volume-group', policy.volume_group),
                                    ('--image-dir', policy.image_dir),
                                    ('--instances-path', policy.instances_path),
                                    ('--cache-dir', policy.cache_dir))
            if value is not None for flag in (key, value)] + [
            flag for source in policy.image_sources for flag in ('--image-source', source)]
        self._workers: list[_Worker] = []
        self.launches = collections.Counter()   # command name -> processes started

    def run(self, op: str, args: dict, instance: str | None = None,
            progress=None) -> CommandResult:
        """Run operation ``op``; return its exit code and output (a non-zero exit is not an
        error). ``progress(line)``: called on the worker thread with each progress line."""
        name = operations.COMMAND.get(op, op)
        self.launches[name] += 1
        result = self._wq.execute('cmd.' + name, self._run_in_thread, op, dict(args), progress)
        if result.rc:
            LOG.debug('[instance: %s] %s %s exited %d: %s', instance, op, args, result.rc,
                      result.stderr.strip())
        return result

    def check(self, op: str, args: dict, instance: str | None = None,
              message=None, progress=None) -> CommandResult:
        """Run ``op``; raise StorageError with the command's own message on a non-zero exit.

        message(stderr) extracts the reason (default: the stripped stderr)."""
        result = self.run(op, args, instance, progress)
        if result.rc:
            reason = (message or (lambda e: e.strip() or 'no message'))(result.stderr)
            raise exception.StorageError(reason='%s failed (exit %d): %s'
                                         % (result.argv[0], result.rc, reason))
        return result

    def _run_in_thread(self, op: str, args: dict, progress=None) -> CommandResult:
        # Runs on a native work-queue thread: plain blocking I/O on this thread's own worker.
        worker = getattr(self._local, 'worker', None)
        if worker is None:
            worker = self._local.worker = self._worker_factory(self._python, self._spawn_env,
                                                               self._spawn_args)
            self._workers.append(worker)
        start = time.monotonic()
        name = (operations.COMMAND.get(op, op),)
        try:
            answer = worker.call({'op': op, 'args': args}, progress)
        except (OSError, EOFError, ValueError) as exc:
            self._local.worker = None
            worker.close()
            return CommandResult(name, 125, '', 'command worker failed: %s' % exc,
                                 time.monotonic() - start)
        return CommandResult(name, answer['rc'], answer['stdout'], answer['stderr'],
                             answer['run_s'])

    def shutdown(self) -> None:
        """Stop every command worker."""
        for worker in self._workers:
            worker.close()
        self._workers.clear()
