"""Batched reports: few sends, latest state and usage win, nothing lost on failure."""
import threading

from agent import reporter as reportermod


class SlowConductor:
    def __init__(self, fail_times=0):
        self.batches = []
        self.usage = []
        self.fail_times = fail_times
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def send(self, states, resources):
        self.entered.set()
        self.gate.wait(5)
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError('conductor away')
        if states:
            self.batches.append(states)
        if resources is not None:
            self.usage.append(resources)


def start(conductor, **kw):
    r = reportermod.StateReporter(conductor.send, **kw)
    threading.Thread(target=r.run, daemon=True).start()
    return r


def state(uuid, seq, vm_state='active'):
    return {'uuid': uuid, 'seq': seq, 'vm_state': vm_state}


def test_changes_made_while_a_report_is_in_flight_go_in_one_later_report():
    c = SlowConductor()
    r = start(c, window=0.0)
    c.gate.clear()
    r.update(state('a', 1))
    assert c.entered.wait(5)
    for i in range(50):
        r.update(state('u%d' % i, 10 + i))
    c.gate.set()
    assert r.flush(5)
    sent = [s for b in c.batches for s in b]
    assert {s['uuid'] for s in sent} == {'a'} | {'u%d' % i for i in range(50)}
    assert len(c.batches) <= 3          # not 51
    r.stop()


def test_a_later_state_supersedes_an_unsent_one():
    c = SlowConductor()
    c.gate.clear()
    r = start(c, window=0.0)
    r.update(state('x', 1))
    assert c.entered.wait(5)           # now in flight, blocked in send
    for seq, vm in ((2, 'building'), (3, 'active'), (4, 'stopped')):
        r.update(state('x', seq, vm))
    r.update(state('x', 3, 'stale'))   # older than what is pending: ignored
    c.gate.set()
    assert r.flush(5)
    assert [s['seq'] for b in c.batches for s in b] == [1, 4]


def test_failed_sends_keep_their_states_until_the_conductor_returns():
    c = SlowConductor(fail_times=3)
    r = start(c, window=0.0, retry_max=0.05, sleep=lambda s: None)
    r.update(state('a', 1))
    r.update(state('b', 2))
    assert r.flush(5)
    assert r.send_failures == 3
    assert sorted(s['uuid'] for b in c.batches for s in b) == ['a', 'b']


def usage(generation, vcpus, instances=1):
    return {'generation': generation, 'capacity': {'vcpus': 8}, 'usage': {'vcpus': vcpus},
            'instances': instances}


def test_usage_reports_supersede_and_travel_with_states():
    c = SlowConductor()
    c.gate.clear()
    r = start(c, window=0.0)
    r.update_resources(usage(10, 1))
    assert c.entered.wait(5)           # generation 10 in flight
    for gen in range(11, 31):
        r.update_resources(usage(gen, gen - 9))
        r.update(state('u%d' % gen, gen))
    r.update_resources(usage(12, 99))  # older than what is queued: ignored
    c.gate.set()
    assert r.flush(5)
    assert [u['generation'] for u in c.usage] == [10, 30]
    assert r.resource_reports_superseded == 19
    assert len(c.batches) == 1 and len(c.batches[0]) == 20   # the states came in the same send
    r.stop()


def test_a_usage_report_equal_to_the_last_sent_is_not_sent():
    c = SlowConductor()
    c.gate.clear()
    r = start(c, window=0.0)
    r.update_resources(usage(1, 1))
    assert c.entered.wait(5)
    r.update_resources(usage(2, 2))    # claimed ...
    r.update_resources(usage(3, 1))    # ... and released before it was sent
    c.gate.set()
    assert r.flush(5)
    assert [u['generation'] for u in c.usage] == [1]
    assert r.resource_reports_unchanged == 1 and r.reports_sent == 1
    r.update_resources(usage(4, 5))
    assert r.flush(5)
    assert [u['generation'] for u in c.usage] == [1, 4]
    r.stop()


def test_a_usage_report_that_failed_is_retried_unless_a_newer_one_came():
    c = SlowConductor(fail_times=2)
    r = start(c, window=0.0, retry_max=0.05, sleep=lambda s: None)
    r.update_resources(usage(1, 1))
    assert r.flush(5)
    assert [u['generation'] for u in c.usage] == [1] and r.send_failures == 2
    r.stop()


def test_while_changes_keep_coming_messages_go_at_most_one_per_busy_window():
    c = SlowConductor()
    r = start(c, window=0.001, busy_window=0.25)
    for i in range(100):                 # a storm: a change every ~5 ms for ~0.5 s
        r.update(state('s%d' % i, i + 1))
        threading.Event().wait(0.005)
    assert r.flush(5)
    assert sum(len(b) for b in c.batches) == 100
    assert len(c.batches) <= 5, [len(b) for b in c.batches]     # ~0.5 s / 0.25 s, not 100
    r.stop()


def test_without_a_busy_window_a_storm_costs_many_messages():
    # The same storm with the short window only: what the busy window saves.
    c = SlowConductor()
    r = start(c, window=0.001)
    for i in range(100):
        r.update(state('s%d' % i, i + 1))
        threading.Event().wait(0.005)
    assert r.flush(5)
    assert len(c.batches) > 20
    r.stop()
