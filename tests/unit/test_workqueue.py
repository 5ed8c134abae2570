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


@pytest.mark.parametrize('kind', ['native', 'green'])
def test_urgent_calls_get_a_reserved_thread_while_shared_ones_are_all_busy(kind):
    """Domain starts hold every shared thread: a journal commit still runs at once, and a
    further start waits for a shared thread (its wait is counted) instead of taking a
    reserved one."""
    if kind == 'native':
        wq, Event = workqueue.ThreadWorkQueue(3, reserved=1), threading.Event
    else:
        wq, Event = workqueue.GreenWorkQueue(3, reserved=1), patcher.original('threading').Event
    gate = Event()
    started = []

    def start(i):
        return wq.execute('libvirt.create', lambda: (started.append(i), gate.wait(10))[1])
    if kind == 'native':
        busy = [threading.Thread(target=start, args=(i,)) for i in range(3)]
        for t in busy:
            t.start()
        workqueue_wait = lambda: [t.join() for t in busy]  # noqa: E731
    else:
        pool = eventlet.GreenPool()
        busy = [pool.spawn(start, i) for i in range(3)]
        workqueue_wait = pool.waitall
    for _ in range(500):
        if len(started) == 2:
            break
        eventlet.sleep(0.01) if kind == 'green' else gate.wait(0.01)
    assert len(started) == 2             # the third start waits: one thread is reserved
    assert wq.execute_urgent('journal.commit', lambda: 'committed') == 'committed'
    assert len(started) == 2
    gate.set()
    workqueue_wait()
    stats = wq.stats()
    assert stats['libvirt.create']['calls'] == 3 and stats['journal.commit']['calls'] == 1
    assert stats['libvirt.create']['wait_max_ms'] > 0
    wq.shutdown()
