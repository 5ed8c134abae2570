"""One sweep, shared: concurrent askers share a single run of an expensive listing.

``SharedSweep.get()`` returns the latest result if it is fresh, else joins the run that is
under way, else starts one. ``invalidate()`` (after the agent changed what is listed) makes
every later ``get()`` wait for a run that started after the change; a run that started
before it is not used by callers that came after it.
"""
import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar('T')


class _Run:
    def __init__(self, generation: int):
        self.generation = generation
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        self.finished_at = 0.0


class SharedSweep(Generic[T]):
    """One listing at a time, shared by every concurrent caller; the agent's own changes
    invalidate it."""
    def __init__(self, fetch: Callable[[], T], max_age: float):
        self._fetch = fetch
        self._max_age = max_age
        self._lock = threading.Lock()
        self._generation = 0
        self._running: _Run | None = None
        self._last: _Run | None = None
        self.runs = 0      # fetches started
        self.shared = 0    # get() calls answered by a run another caller started or a cache

    def invalidate(self) -> None:
        """The next ``get`` lists again (something changed)."""
        with self._lock:
            self._generation += 1

    def get(self) -> T:
        """A listing no older than the cache time and than the last ``invalidate``: the one
        under way if any."""
        with self._lock:
            now = time.monotonic()
            last = self._last
            if (last is not None and last.generation == self._generation
                    and now - last.finished_at <= self._max_age):
                self.shared += 1
                return last.result
            run = self._running
            if run is not None and run.generation == self._generation:
                self.shared += 1
                owner = False
            else:
                run = self._running = _Run(self._generation)
                self.runs += 1
                owner = True
        if owner:
            try:
                run.result = self._fetch()
            except BaseException as exc:   # every waiter gets the same error
                run.error = exc
            run.finished_at = time.monotonic()
            with self._lock:
                if self._running is run:
                    self._running = None
                if run.error is None and (self._last is None
                                          or run.generation >= self._last.generation):
                    self._last = run
            run.done.set()
        else:
            run.done.wait()
        if run.error is not None:
            raise run.error
        return run.result
