"""SharedSweep: one run serves every concurrent caller; invalidation forces a new run."""
import threading

import pytest

from agent.storage import sweep


class Listing:
    def __init__(self):
        self.runs = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = None

    def __call__(self):
        self.runs += 1
        number = self.runs
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            raise self.fail
        return number


def ask_concurrently(s, n):
    results, threads = [], []
    for _ in range(n):
        t = threading.Thread(target=lambda: results.append(s.get()))
        t.start()
        threads.append(t)
    return results, threads


def test_concurrent_callers_share_one_run():
    listing = Listing()
    listing.gate.clear()
    s = sweep.SharedSweep(listing, max_age=60)
    results, threads = ask_concurrently(s, 50)
    assert listing.entered.wait(5)
    listing.gate.set()
    for t in threads:
        t.join()
    assert listing.runs == 1 and results == [1] * 50
    assert s.get() == 1 and listing.runs == 1        # fresh: served from the last run


def test_callers_after_an_invalidation_do_not_get_a_run_that_started_before_it():
    listing = Listing()
    listing.gate.clear()
    s = sweep.SharedSweep(listing, max_age=60)
    early, t_early = ask_concurrently(s, 1)
    assert listing.entered.wait(5)
    s.invalidate()                     # e.g. an lvcreate finished meanwhile
    late, t_late = ask_concurrently(s, 5)
    listing.gate.set()
    for t in t_early + t_late:
        t.join()
    assert early == [1]
    assert late == [2] * 5 and listing.runs == 2


def test_max_age_and_errors_reach_every_waiter():
    listing = Listing()
    s = sweep.SharedSweep(listing, max_age=0)
    assert s.get() == 1 and s.get() == 2          # max_age 0: each get runs
    listing.fail = RuntimeError('lvs failed')
    with pytest.raises(RuntimeError, match='lvs failed'):
        s.get()
