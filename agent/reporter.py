"""Batched instance-state reports to the conductor.

Callers ``update()`` an instance's latest state and return at once. One sender loop sends
whatever is pending in one report, after a short window that gathers concurrent changes:
at most one report is in flight, a later state of an instance supersedes an unsent earlier
one, and a failed send keeps its states for the next attempt (with back-off), so nothing is
lost while the conductor is away.
"""
import logging
import threading
import time
from typing import Callable

LOG = logging.getLogger(__name__)


class StateReporter:
    def __init__(self, send: Callable[[list[dict]], None], window: float = 0.05,
                 retry_max: float = 10.0, sleep: Callable[[float], None] = time.sleep):
        self._send = send
        self._window = window
        self._retry_max = retry_max
        self._sleep = sleep
        self._pending: dict[str, dict] = {}
        self._cond = threading.Condition()
        self._inflight = False
        self._stopped = False
        self.reports_sent = 0
        self.states_sent = 0
        self.send_failures = 0

    def update(self, state: dict) -> None:
        """Queue ``state`` (a dict with 'uuid' and a 'seq' that grows per change)."""
        with self._cond:
            old = self._pending.get(state['uuid'])
            if old is None or old['seq'] < state['seq']:
                self._pending[state['uuid']] = state
            self._cond.notify_all()

    def run(self) -> None:
        """The sender loop; run it in its own (green)thread."""
        backoff = 0.0
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped and not self._pending:
                    return
            if self._window and not backoff:
                self._sleep(self._window)
            with self._cond:
                batch, self._pending = self._pending, {}
                self._inflight = True
            try:
                self._send(sorted(batch.values(), key=lambda s: s['seq']))
            except Exception as exc:
                self.send_failures += 1
                backoff = min(self._retry_max, max(0.1, backoff * 2))
                LOG.warning('state report of %d instances failed (%s); retrying in %.1fs',
                            len(batch), exc, backoff)
                with self._cond:
                    for uuid, state in batch.items():
                        self._pending.setdefault(uuid, state)   # a newer update wins
                    self._inflight = False
                self._sleep(backoff)
                continue
            backoff = 0.0
            with self._cond:
                self._inflight = False
                self.reports_sent += 1
                self.states_sent += len(batch)
                self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is pending or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def stats(self) -> dict:
        return {'reports_sent': self.reports_sent, 'states_sent': self.states_sent,
                'send_failures': self.send_failures, 'pending': len(self._pending)}
