"""The global native-thread work queue, and the other points where threads meet greenthreads.

Every blocking call the agent makes (libvirt, storage commands) runs through
``WorkQueue.execute``: ONE queue shared by all worker threads, so a call never waits behind a
busy thread while another is idle. Those calls may occupy all threads but ``reserved``; the
reserved ones serve ``execute_urgent`` (the job journal's commits), so a boot request's answer
never waits behind domain starts, however many are in progress. Each call is timed in two
parts: queue wait (submitted -> a thread picked it up, including the wait for a share of the
threads) and run time.

Two runtimes offer the same interface (``[DEFAULT] runtime`` picks one for the agent):
- ``green_runtime`` (eventlet): eventlet's tpool (one global request queue, N native threads);
  native threads hand events to greenthreads through a pipe the hub watches.
- ``native_runtime`` (threading): plain threads, one global queue of our own. Unit tests use
  it too.
This module and the agent's entry point are the only places that import eventlet.
"""
import collections
import dataclasses
import logging
import os
import threading
import time
from typing import Any, Callable

LOG = logging.getLogger(__name__)

_DEFAULT_SAMPLES = 2048


def _deliver(handler: Callable[[Any], None], item: Any) -> None:
    try:
        handler(item)
    except Exception:   # one bad event must not stop the delivery of the next
        LOG.exception('event handler failed on %r', item)


class OpStats:
    """Per-operation counters: calls, errors, queue-wait and run-time samples (seconds)."""

    def __init__(self, samples: int = _DEFAULT_SAMPLES):
        self.calls = 0
        self.errors = 0
        self.wait = collections.deque(maxlen=samples)
        self.run = collections.deque(maxlen=samples)
        self.wait_total = 0.0
        self.run_total = 0.0

    def record(self, wait: float, run: float, failed: bool) -> None:
        """Add one call: its queue wait, run time and whether it failed."""
        self.calls += 1
        self.errors += failed
        self.wait.append(wait)
        self.run.append(run)
        self.wait_total += wait
        self.run_total += run

    @staticmethod
    def _pct(samples, q: float) -> float:
        if not samples:
            return 0.0
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict:
        """Calls, errors and wait/run percentiles in ms."""
        return {
            'calls': self.calls, 'errors': self.errors,
            'wait_p50_ms': round(self._pct(self.wait, 0.5) * 1000, 3),
            'wait_p99_ms': round(self._pct(self.wait, 0.99) * 1000, 3),
            'wait_max_ms': round(max(self.wait, default=0.0) * 1000, 3),
            'run_p50_ms': round(self._pct(self.run, 0.5) * 1000, 3),
            'run_p99_ms': round(self._pct(self.run, 0.99) * 1000, 3),
            'wait_total_s': round(self.wait_total, 6), 'run_total_s': round(self.run_total, 6),
        }


def _timed(enqueued: float, fn: Callable, args, kwargs):
    """Runs in a worker thread: the call plus its timing, never raising."""
    start = time.monotonic()
    try:
        result, error = fn(*args, **kwargs), None
    except BaseException as exc:  # handed back to the caller, re-raised there
        result, error = None, exc
    return result, error, start - enqueued, time.monotonic() - start


class WorkQueue:
    """Runs blocking callables on native threads that all draw from one queue.

    ``execute`` blocks the calling (green)thread only, returns ``fn``'s result or raises its
    exception, and records the queue wait and run time under ``op``. Statistics are updated in
    the caller's context (under a lock: callers are native threads in the threading runtime),
    so worker threads never touch a (possibly green) lock.
    """

    def __init__(self, threads: int, samples: int = _DEFAULT_SAMPLES, reserved: int = 0):
        self.threads = threads
        self.reserved = min(reserved, threads - 1)
        self._shared = threading.BoundedSemaphore(threads - self.reserved)   # green in the agent
        self._samples = samples
        self._stats: dict[str, OpStats] = {}
        self._stats_lock = threading.Lock()
        # observe(op, enqueued, started, ended, failed), called in the caller's context after
        # each call (the tracer, the metrics); times are time.monotonic() seconds.
        self.observers: list[Callable[[str, float, float, float, bool], None]] = []

    def _submit(self, call: Callable, *args) -> Any:
        raise NotImplementedError

    def execute(self, op: str, fn: Callable, *args, **kwargs) -> Any:
        """Run ``fn`` on a thread of the shared (unreserved) part of the pool."""
        enqueued = time.monotonic()
        with self._shared:
            return self._execute(op, enqueued, fn, args, kwargs)

    def execute_urgent(self, op: str, fn: Callable, *args, **kwargs) -> Any:
        """Run ``fn`` at once on any free thread, the reserved ones included."""
        return self._execute(op, time.monotonic(), fn, args, kwargs)

    def _execute(self, op: str, enqueued: float, fn: Callable, args, kwargs) -> Any:
        result, error, wait, run = self._submit(_timed, enqueued, fn, args, kwargs)
        with self._stats_lock:
            stats = self._stats.get(op)
            if stats is None:
                stats = self._stats[op] = OpStats(self._samples)
            stats.record(wait, run, error is not None)
        for observe in self.observers:
            observe(op, enqueued, enqueued + wait, enqueued + wait + run, error is not None)
        if error is not None:
            raise error
        return result

    def stats(self) -> dict:
        """Per-operation summaries plus an ``all`` row over every operation."""
        with self._stats_lock:
            out = {op: s.summary() for op, s in sorted(self._stats.items())}
            total = OpStats(self._samples * max(1, len(self._stats)))
            for s in self._stats.values():
                for w, r in zip(s.wait, s.run):
                    total.record(w, r, False)
                total.errors += s.errors
            out['all'] = total.summary()
            out['all']['calls'] = sum(s.calls for s in self._stats.values())
        out['threads'] = self.threads
        return out

    def thread_local(self):
        """A thread-local object of the worker threads (each native thread sees its own)."""
        return threading.local()

    def shutdown(self) -> None:
        """Stop the worker threads (calls submitted afterwards never run)."""
        pass


class ThreadWorkQueue(WorkQueue):
    """Plain native threads around one ``queue.SimpleQueue``."""

    def __init__(self, threads: int, samples: int = _DEFAULT_SAMPLES, reserved: int = 0):
        super().__init__(threads, samples, reserved)
        import queue
        self._queue = queue.SimpleQueue()
        self._workers = [threading.Thread(target=self._work, name='workqueue-%d' % i, daemon=True)
                         for i in range(threads)]
        for w in self._workers:
            w.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            call, args, done = item
            done.append(call(*args))
            done[0].set()

    def _submit(self, call: Callable, *args) -> Any:
        done = [threading.Event()]
        self._queue.put((call, args, done))
        done[0].wait()
        return done[1]

    def shutdown(self) -> None:
        """Stop the worker threads (calls submitted afterwards never run)."""
        for _ in self._workers:
            self._queue.put(None)


class GreenWorkQueue(WorkQueue):
    """eventlet.tpool: one global request queue served by ``threads`` native threads."""

    def __init__(self, threads: int, samples: int = _DEFAULT_SAMPLES, reserved: int = 0):
        super().__init__(threads, samples, reserved)
        from eventlet import semaphore
        self._shared = semaphore.BoundedSemaphore(threads - self.reserved)
        from eventlet import tpool
        tpool.set_num_threads(threads)
        self._tpool = tpool

    def _submit(self, call: Callable, *args) -> Any:
        return self._tpool.execute(call, *args)

    def thread_local(self):
        from eventlet import patcher
        return patcher.original('threading').local()

    def shutdown(self) -> None:
        """Stop eventlet's tpool threads."""
        self._tpool.killall()


class GreenBridge:
    """Hands items from native threads to a handler running in a greenthread.

    ``put`` is safe from any native thread; the handler runs in one greenthread, in order.
    A pipe wakes the hub; the items themselves travel through an unpatched queue.
    """

    def __init__(self, handler: Callable[[Any], None]):
        import eventlet
        from eventlet import hubs, patcher
        self._queue = patcher.original('queue').SimpleQueue()
        self._os = patcher.original('os')
        self._rfd, self._wfd = self._os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._handler = handler
        self._trampoline = hubs.trampoline
        self._thread = eventlet.spawn(self._run)

    def put(self, item: Any) -> None:
        """Hand ``item`` to the handler greenthread (thread-safe)."""
        self._queue.put(item)
        try:
            self._os.write(self._wfd, b'x')
        except BlockingIOError:   # a wake-up is already pending
            pass

    def _run(self) -> None:
        while True:
            self._trampoline(self._rfd, read=True)
            try:
                self._os.read(self._rfd, 4096)
            except BlockingIOError:
                pass
            while not self._queue.empty():
                _deliver(self._handler, self._queue.get())


class ThreadBridge:
    """The native-thread counterpart of ``GreenBridge``: one consumer thread, in order."""

    def __init__(self, handler: Callable[[Any], None]):
        import queue
        self._queue = queue.SimpleQueue()
        self._handler = handler
        threading.Thread(target=self._run, name='event-bridge', daemon=True).start()

    def put(self, item: Any) -> None:
        """Hand ``item`` to the handler thread (thread-safe)."""
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            _deliver(self._handler, self._queue.get())


@dataclasses.dataclass
class Runtime:
    """What plain code needs to run concurrently, independent of eventlet.

    spawn(fn, *args): run fn concurrently with the caller (a greenthread under eventlet).
    spawn_native(fn, name): run fn on a real OS thread (for loops that block in C).
    bridge(handler): an object whose put(item), callable from native threads, hands items to
    handler in spawn's context.
    name: 'eventlet' or 'threading', also the name of oslo.messaging's matching executor.
    """

    name: str
    workqueue: WorkQueue
    spawn: Callable[..., None]
    spawn_native: Callable[[Callable[[], None], str], None]
    bridge: Callable[[Callable[[Any], None]], Any]
    sleep: Callable[[float], None]


def _native_thread(fn: Callable[[], None], name: str, thread_cls=threading.Thread) -> None:
    thread_cls(target=fn, name=name, daemon=True).start()


def native_runtime(threads: int, samples: int = _DEFAULT_SAMPLES, reserved: int = 0) -> Runtime:
    def spawn(fn, *args):
        threading.Thread(target=fn, args=args, daemon=True).start()
    return Runtime(name='threading', workqueue=ThreadWorkQueue(threads, samples, reserved),
                   spawn=spawn,
                   spawn_native=_native_thread, bridge=ThreadBridge, sleep=time.sleep)


def green_runtime(threads: int, samples: int = _DEFAULT_SAMPLES, reserved: int = 0) -> Runtime:
    import eventlet
    from eventlet import patcher
    original_thread = patcher.original('threading').Thread

    def spawn_native(fn, name):
        _native_thread(fn, name, thread_cls=original_thread)
    return Runtime(name='eventlet', workqueue=GreenWorkQueue(threads, samples, reserved),
                   spawn=eventlet.spawn_n,
                   spawn_native=spawn_native, bridge=GreenBridge, sleep=eventlet.sleep)


RUNTIMES = {'eventlet': green_runtime, 'threading': native_runtime}


def green() -> bool:
    """Whether this process is eventlet-patched (what the agent reports in its stats)."""
    import sys
    patcher = sys.modules.get('eventlet.patcher')
    return bool(patcher and patcher.is_monkey_patched('thread'))
