"""seq and generation numbers grow strictly across restarts, whatever the clock does (issue 11:
an agent restarted with its clock behind its last run was ignored by the conductor)."""
import functools

from agent.compute import core as coremod
from agent import sequence
from tests.unit.conftest import Agent, boot_spec

X = '11111111-2222-3333-4444-555555555555'
Y = '66666666-7777-8888-9999-000000000000'


class Store:
    """The journal's meta value, as the sequence sees it: written now or later."""

    def __init__(self):
        self.value = 0
        self.later = []

    def now(self, v):
        self.value = v

    def store_later(self, v):
        self.later.append(v)
        self.value = v


def test_numbers_grow_across_a_restart_with_the_clock_set_back():
    store = Store()
    first = sequence.Sequence(store.value, store.now, store.store_later, block=8,
                              clock=lambda: 1000)
    handed = [first.next() for _ in range(20)]     # crosses two block boundaries
    assert handed == sorted(set(handed)) and handed[0] == 1001
    assert store.later and store.value > handed[-1]      # reserved ahead before being used
    second = sequence.Sequence(store.value, store.now, store.store_later, block=8,
                               clock=lambda: 5)        # the clock went back by 995 ns
    assert second.next() > handed[-1]


def test_a_number_is_reserved_on_disk_before_it_is_handed_out():
    store = Store()
    seq = sequence.Sequence(0, store.now, store.store_later, block=4, clock=lambda: 0)
    for _ in range(100):
        assert seq.next() < store.value


def test_an_agent_restarted_with_its_clock_behind_still_reports_newer_numbers(
        conf, hv, monkeypatch):
    a = Agent(conf, hv)
    a.wait_job(a.manager.requests.boot_instance(boot_spec(X))['job_id'])
    a.wait_reported(X, 'active')
    last_seq = a.reports.latest(X)['seq']
    last_generation = a.manager.tracker.snapshot()['generation']
    a.stop()
    # The node's clock is now a day behind its last run.
    behind = functools.partial(sequence.Sequence, clock=lambda: last_seq - 86400 * 10 ** 9)
    monkeypatch.setattr(coremod.sequence, 'Sequence', behind)
    b = Agent(conf, hv, lvm=a.lvm)
    try:
        b.wait_job(b.manager.requests.boot_instance(boot_spec(Y))['job_id'])
        b.wait_reported(Y, 'active')
        assert b.reports.latest(Y)['seq'] > last_seq
        assert b.reports.latest(X)['seq'] > last_seq     # the adopted instance, re-reported
        assert b.manager.tracker.snapshot()['generation'] > last_generation
    finally:
        b.stop()
