"""Batched reports to the conductor: instance states and the node's resource usage.

Callers ``update()`` an instance's latest state, or ``update_resources()`` the node's latest
usage report, and return at once. One sender loop sends whatever is pending in one message,
after a window that gathers concurrent changes. The window adapts: a change after a quiet
spell waits ``window`` (short); while changes keep coming (a storm) messages go at most one
per ``busy_window``, so N boots cost about (storm length / busy_window) messages however large
N is, and no change waits longer than ``busy_window`` plus one send. At most one message is
in flight, a later state of an instance (or a later resource generation) supersedes an unsent
earlier one, a resource report whose capacity and usage equal the last one sent is dropped,
and a failed send keeps its content for the next attempt (with back-off), so nothing is lost
while the conductor is away.
"""
import logging
import threading
import time
from typing import Callable

from agent import exception
from agent import resources as resources_mod
from agent import trace as tracemod

LOG = logging.getLogger(__name__)


class StateReporter:
    """Coalesces instance states and usage reports and sends them to the conductor, one message
    in flight at a time (``run`` in its own (green)thread)."""
    def __init__(self, send: Callable[[list[dict], dict | None], None], window: float = 0.05,
                 retry_max: float = 10.0, sleep: Callable[[float], None] = time.sleep,
                 tracer: tracemod.NullTracer | None = None, busy_window: float | None = None):
        self._send = send
        self._tracer = tracer or tracemod.NullTracer()
        self._window = window
        self._busy_window = max(window, busy_window if busy_window is not None else window)
        self._last_send = -1e9       # monotonic time the last message went
        self._retry_max = retry_max
        self._sleep = sleep
        self._pending: dict[str, dict] = {}
        self._resources: dict | None = None      # the newest unsent resource report
        self._resources_sent: dict | None = None
        self._newest_generation = -1
        self._cond = threading.Condition()
        self._inflight = False
        self._stopped = False
        self.reports_sent = 0
        self.states_sent = 0
        self.resource_reports_sent = 0
        self.resource_reports_superseded = 0
        self.resource_reports_unchanged = 0
        self.send_failures = 0
        self.reports_refused = 0

    def update(self, state: dict) -> None:
        """Queue ``state`` (a dict with 'uuid' and a 'seq' that grows per change)."""
        with self._cond:
            old = self._pending.get(state['uuid'])
            if old is None or old['seq'] < state['seq']:
                self._pending[state['uuid']] = state
            self._cond.notify_all()

    def update_resources(self, report: dict) -> None:
        """Queue the node's resource report (a dict with a growing 'generation')."""
        with self._cond:
            if report['generation'] <= self._newest_generation:
                return      # an older report handed in late: a newer one is queued or sent
            self._newest_generation = report['generation']
            if self._resources is not None:
                self.resource_reports_superseded += 1
            self._resources = report
            self._cond.notify_all()

    def _gather(self) -> None:
        """Wait for more changes to join the message: ``window`` after a quiet spell; while
        changes keep coming (the last message left less than ``busy_window`` ago), until
        ``busy_window`` after that message."""
        since = time.monotonic() - self._last_send
        wait = self._busy_window - since if since < self._busy_window else self._window
        if wait > 0:
            self._sleep(wait)

    def _take(self) -> tuple[dict, dict | None]:
        """Under the lock: everything pending, minus a resource report that changes nothing."""
        batch, self._pending = self._pending, {}
        resources, self._resources = self._resources, None
        if resources_mod.same_usage(resources, self._resources_sent):
            self.resource_reports_unchanged += 1
            resources = None
        return batch, resources

    def run(self) -> None:
        """The sender loop; run it in its own (green)thread."""
        backoff = 0.0
        while True:
            with self._cond:
                while not self._pending and self._resources is None and not self._stopped:
                    self._cond.wait()
                if self._stopped and not self._pending and self._resources is None:
                    return
            if not backoff:
                self._gather()
            with self._cond:
                batch, resources = self._take()
                if not batch and resources is None:
                    self._cond.notify_all()
                    continue
                self._inflight = True
            try:
                self._last_send = time.monotonic()
                self._traced_send(sorted(batch.values(), key=lambda s: s['seq']), resources)
            except exception.InvalidReport as exc:
                # Refused whole by the conductor: sending it again would be refused again
                # (and hold back every later report). Said loudly, then dropped.
                self.reports_refused += 1
                LOG.error('the conductor refused a report of %d instance states: %s',
                          len(batch), exc)
                with self._cond:
                    self._inflight = False
                    self._cond.notify_all()
                continue
            except Exception as exc:
                backoff = min(self._retry_max, max(0.1, backoff * 2))
                self._send_failed(exc, batch, resources, backoff)
                self._sleep(backoff)
                continue
            backoff = 0.0
            with self._cond:
                self._inflight = False
                self.reports_sent += 1
                self.states_sent += len(batch)
                if resources is not None:
                    self._resources_sent = resources
                    self.resource_reports_sent += 1
                self._cond.notify_all()

    def _send_failed(self, exc: Exception, batch: dict, resources: dict | None,
                     backoff: float) -> None:
        """Put a failed report's states back for the next try (a newer update wins)."""
        self.send_failures += 1
        LOG.warning('report of %d instance states%s failed (%s); retrying in %.1fs',
                    len(batch), ' and usage' if resources else '', exc, backoff)
        with self._cond:
            for uuid, state in batch.items():
                self._pending.setdefault(uuid, state)
            if resources is not None and self._resources is None:
                self._resources = resources
            self._inflight = False

    def _traced_send(self, states: list[dict], resources: dict | None) -> None:
        """Send; traced on the 'conductor reports' track, with a mark on the track of every
        instance whose state the message carried."""
        start = self._tracer.now()
        self._send(states, resources)
        if self._tracer.enabled:
            self._tracer.complete('report', 'conductor', start, self._tracer.now(),
                                  track='conductor reports', states=len(states),
                                  usage=resources is not None)
            for state in states:
                self._tracer.instant('reported %s' % state.get('vm_state'), 'conductor',
                                     uuid=state['uuid'])

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._resources is not None or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def stop(self) -> None:
        """Stop the send loop; what is unsent stays unsent."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def stats(self) -> dict:
        """Counters: states queued, superseded and sent, messages, retries."""
        return {'reports_sent': self.reports_sent, 'states_sent': self.states_sent,
                'resource_reports_sent': self.resource_reports_sent,
                'resource_reports_superseded': self.resource_reports_superseded,
                'resource_reports_unchanged': self.resource_reports_unchanged,
                'resource_generation_sent': (self._resources_sent or {}).get('generation'),
                'send_failures': self.send_failures, 'reports_refused': self.reports_refused,
                'pending': len(self._pending)}
