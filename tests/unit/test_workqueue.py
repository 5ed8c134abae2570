"""The work queue and the thread-to-greenthread bridge, in both runtimes."""
import threading

import eventlet
import pytest
from eventlet import patcher

from agent import workqueue


def test_thread_queue_runs_calls_and_records_wait_and_run():
    wq = workqueue.ThreadWorkQueue(2)
    gate = threading.Event()
    results = []

    def call(i):
        results.append(wq.execute('op', lambda: gate.wait(5) and i))
    callers = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for c in callers:
        c.start()
    gate.set()
    for c in callers:
        c.join()
    assert sorted(results) == list(range(6))
    stats = wq.stats()
    assert stats['op']['calls'] == 6 and stats['all']['calls'] == 6 and stats['threads'] == 2
    wq.shutdown()


def test_errors_propagate_to_the_caller_and_are_counted():
    wq = workqueue.ThreadWorkQueue(1)
    with pytest.raises(ZeroDivisionError):
        wq.execute('div', lambda: 1 / 0)
    assert wq.stats()['div']['errors'] == 1
    wq.shutdown()


def test_green_queue_does_not_block_other_greenthreads():
    """Blocking calls wait in native threads; meanwhile the hub keeps running greenthreads.

    If ``execute`` blocked the hub, the greenthread that opens the gate could never run and
    every call would return False (its wait times out) instead of True.
    """
    wq = workqueue.GreenWorkQueue(4)
    gate = patcher.original('threading').Event()
    pool = eventlet.GreenPool()
    calls = [pool.spawn(wq.execute, 'blocking', gate.wait, 10) for _ in range(8)]

    def opener():
        eventlet.sleep(0)   # runs only if the hub is free
        gate.set()
    pool.spawn(opener)
    assert [c.wait() for c in calls] == [True] * 8
    stats = wq.stats()['blocking']
    assert stats['calls'] == 8
    # 8 calls on 4 threads drawing from one queue: the later four waited in it.
    assert stats['wait_max_ms'] > 0


def test_green_bridge_hands_items_from_native_threads_in_order():
    got = []
    bridge = workqueue.GreenBridge(got.append)
    native = patcher.original('threading').Thread(
        target=lambda: [bridge.put(i) for i in range(100)])
    native.start()
    native.join()
    for _ in range(1000):
        if len(got) == 100:
            break
        eventlet.sleep(0.01)
    assert got == list(range(100))


def test_thread_bridge_hands_items_in_order():
    got = []
    done = threading.Event()
    bridge = workqueue.ThreadBridge(lambda i: (got.append(i), i == 49 and done.set()))
    for i in range(50):
        bridge.put(i)
    assert done.wait(5)
    assert got == list(range(50))
