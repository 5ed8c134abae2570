"""Numbers that grow strictly across agent restarts, whatever the wall clock does.

Instance-state ``seq`` and usage ``generation`` numbers tell the conductor which report is
newer. Taken from the clock alone, an agent restarted with its clock behind its last run would
be ignored by the conductor for as long as the difference. So the numbers start above both the
clock (in ns: the conductor can tell a number from the far future) and the highest number the
last run could have handed out, which is kept on disk: a block of numbers is reserved (written
and fsync'd) before any of it is used, and the next block is reserved well before the current
one runs out.

Plain code: ``store_now`` writes synchronously (start-up), ``store_later`` with the next
journal commit (far ahead of need).
"""
import threading
import time
from typing import Callable

from agent import crashpoints

BLOCK = 1 << 30          # ~1.07 s of clock: a restart moves the numbers at most this far ahead


class Sequence:
    """``next()``: a number larger than any this node handed out before (this run or any
    earlier one)."""

    def __init__(self, reserved: int, store_now: Callable[[int], None],
                 store_later: Callable[[int], None], block: int = BLOCK,
                 clock: Callable[[], int] = time.time_ns):
        self._block = block
        self._store_later = store_later
        self._lock = threading.Lock()
        self._next = max(clock(), reserved) + 1
        self._limit = self._next + block
        crashpoints.reached('sequence.reserve.before')
        store_now(self._limit)            # durable before the first number is used
        crashpoints.reached('sequence.reserve.after')

    def next(self) -> int:
        """The next number: larger than every number handed out before, also before a restart."""
        with self._lock:
            value = self._next
            self._next += 1
            if self._limit - value == self._block // 2:
                self._limit += self._block
                limit = self._limit
            else:
                limit = None
        if limit is not None:
            self._store_later(limit)      # lands long before the other half is used
        return value
