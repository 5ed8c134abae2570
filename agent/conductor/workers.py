"""Several conductor processes on one topic (``[conductor] workers``): a parent that migrates
the store once, forks the workers, starts a worker again when one dies (not more often than
every ``RESTART_DELAY`` seconds), and on SIGTERM/SIGINT stops them all and waits for them.

Each worker builds its own service after the fork (connections never cross a fork).
"""
import logging
import os
import signal
import time

LOG = logging.getLogger(__name__)

RESTART_DELAY = 1.0


class Launcher:
    def __init__(self, count: int, run_worker, prepare=None):
        """``run_worker(index)`` runs one worker to its end (in the child); ``prepare()`` runs
        once in the parent before any fork (the migration)."""
        self._count = count
        self._run_worker = run_worker
        self._prepare = prepare
        self._children: dict[int, int] = {}       # pid -> worker index
        self._stopping = False
        self.restarts = 0

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:                                   # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                self._run_worker(index)
                code = 0
            except BaseException:
                LOG.exception('conductor worker %d failed', index)
            finally:
                os._exit(code)
        self._children[pid] = index
        LOG.info('conductor worker %d started (pid %d)', index, pid)

    def _stop(self, *_args) -> None:
        self._stopping = True
        for pid in list(self._children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        """Until stopped; 0."""
        if self._prepare is not None:
            self._prepare()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(self._count):
            self._spawn(index)
        last_start: dict[int, float] = {}
        while self._children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            index = self._children.pop(pid, None)
            if index is None or self._stopping:
                continue
            LOG.warning('conductor worker %d (pid %d) ended (status %d): starting it again',
                        index, pid, status)
            wait = RESTART_DELAY - (time.monotonic() - last_start.get(index, -1e9))
            if wait > 0:
                time.sleep(wait)
            if not self._stopping:
                last_start[index] = time.monotonic()
                self.restarts += 1
                self._spawn(index)
        return 0
