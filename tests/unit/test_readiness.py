"""Guest readiness from the agent-channel events of the fake libvirt: ``hv.guest_agent(uuid)``
is a guest opening org.qemu.guest_agent.0 (the fake keeps the channel state in the live XML,
as libvirt does). Calls are counted by the fake hypervisor itself."""
import sqlite3
import time

import pytest

from agent import exception
from agent.conductor import db
from agent.conductor import validate
from agent.virt import driver as vdriver
from agent.virt.libvirt import config as vconfig
from tests.unit.conftest import Agent, boot_spec, wait_until

U1 = '11111111-2222-3333-4444-555555555555'


def _booted(agent, uuid=U1):
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(uuid))['job_id'])
    agent.wait_state(uuid, 'active')
    return agent.manager.instances[uuid]


def _readiness(agent, uuid, value):
    wait_until(lambda: agent.manager.instances[uuid].readiness == value,
               what='%s readiness %s' % (uuid, value))
    agent.reporter.flush(10)
    wait_until(lambda: (agent.reports.latest(uuid) or {}).get('readiness') == value,
               what='conductor to see %s %s' % (uuid, value))
    return agent.reports.latest(uuid)


def test_every_domain_has_the_agent_channel_and_its_state_is_read_from_the_xml():
    xml = vconfig.GuestConfig(uuid=U1, name='n', virt_type='qemu', arch='x86_64', vcpus=1,
                              memory_mb=64, console_log='/c').to_xml()
    assert "name=\"org.qemu.guest_agent.0\"" in xml and '<channel type="unix">' in xml
    assert vconfig.agent_connected(xml) is None          # defined, not running: no state
    live = xml.replace('name="org.qemu.guest_agent.0"',
                       'name="org.qemu.guest_agent.0" state="%s"')
    assert vconfig.agent_connected(live % 'connected') is True
    assert vconfig.agent_connected(live % 'disconnected') is False
    assert vconfig.agent_connected('<domain') is None


def test_ready_comes_by_event_with_no_call(agent, hv):
    _booted(agent)
    state = _readiness(agent, U1, 'waiting')
    assert state['ready_at'] is None and state['vm_state'] == 'active'
    before = len(hv.calls)
    hv.guest_agent(U1)
    state = _readiness(agent, U1, 'ready')
    assert state['vm_state'] == 'active' and state['ready_at'] >= state['active_at']
    assert hv.calls[before:] == []                         # no polling, no lookup
    assert agent.manager.requests.get_instance(U1)['readiness'] == 'ready'


def test_a_guest_closing_the_channel_waits_again_and_a_stop_clears_readiness(agent, hv):
    inst = _booted(agent)
    hv.guest_agent(U1)
    _readiness(agent, U1, 'ready')
    first = inst.ready_at
    hv.guest_agent(U1, connected=False)        # e.g. the guest reboots
    assert _readiness(agent, U1, 'waiting')['ready_at'] is None
    hv.guest_agent(U1)
    assert _readiness(agent, U1, 'ready')['ready_at'] >= first and inst.readies == 2
    agent.wait_job(agent.manager.requests.stop_instance(U1, timeout=0)['job_id'])
    agent.wait_reported(U1, 'stopped')
    state = agent.reports.latest(U1)
    assert (state['readiness'], state['ready_at']) == (None, None)
    agent.wait_job(agent.manager.requests.start_instance(U1)['job_id'])
    _readiness(agent, U1, 'waiting')               # started again: not ready until it says so


def test_a_guest_that_never_connects_is_late_not_an_error(conf, hv):
    agent = Agent(conf, hv, ready_within=0.3)
    try:
        _booted(agent)
        state = _readiness(agent, U1, 'late')
        assert (state['vm_state'], state['fault'], state['power_state']) == \
            ('active', None, 'running')
        hv.guest_agent(U1)                      # connecting late is still ready
        _readiness(agent, U1, 'ready')
    finally:
        agent.stop()


def test_a_timer_of_an_earlier_wait_does_not_make_a_later_one_late(conf, hv):
    agent = Agent(conf, hv, ready_within=0.5)
    try:
        inst = _booted(agent)
        hv.guest_agent(U1)
        _readiness(agent, U1, 'ready')
        hv.guest_agent(U1, connected=False)      # a new wait: a new timer
        _readiness(agent, U1, 'waiting')
        token = inst.ready_token
        hv.guest_agent(U1)
        _readiness(agent, U1, 'ready')
        time.sleep(0.8)          # both timers have fired by now
        assert inst.readiness == 'ready' and inst.ready_token == token
    finally:
        agent.stop()


def test_readiness_missed_while_disconnected_is_resynced_from_the_xml(agent, hv):
    _booted(agent)
    _readiness(agent, U1, 'waiting')
    hv.restart(stay_down=True)
    wait_until(lambda: hv.calls.count('open') >= 3, what='reconnect attempts while down')
    hv.domains[U1].agent = 'connected'         # the guest connected: no connection, no event
    xml_reads = hv.calls.count('XMLDesc')
    hv.down = False
    _readiness(agent, U1, 'ready')
    assert hv.calls.count('XMLDesc') == xml_reads + 1     # one per running instance of ours


def test_a_restarted_agent_reads_readiness_from_the_listing_it_makes(conf, hv):
    first = Agent(conf, hv)
    _booted(first)
    hv.guest_agent(U1)
    _readiness(first, U1, 'ready')
    first.stop()
    second = Agent(conf, hv)
    try:
        inst = second.manager.instances[U1]
        assert (inst.vm_state, inst.readiness) == ('active', 'ready')
        assert hv.calls.count('XMLDesc') == 1        # the adoption's read, nothing more
    finally:
        second.stop()


def test_the_conductor_stores_readiness_and_when_it_saw_it(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    base = {'uuid': U1, 'name': 'n', 'vm_state': 'active', 'accepted_at': 1.0,
            'active_at': 2.0}
    store.apply_report('h1', [dict(base, seq=1, readiness='waiting', ready_at=None)])
    row = store.get(U1)
    assert row['readiness'] == 'waiting' and row['ready_seen_at'] is None
    assert row['active_seen_at'] == row['received_at']
    store.apply_report('h1', [dict(base, seq=2, readiness='ready', ready_at=5.0)])
    seen = store.get(U1)['ready_seen_at']
    assert seen is not None and store.get(U1)['active_seen_at'] == row['active_seen_at']
    store.apply_report('h1', [dict(base, seq=3, readiness='ready', ready_at=5.0, task=None)])
    assert store.get(U1)['ready_seen_at'] == seen           # the same ready: first sight kept
    rows = store.wait_for([U1], ['active'], timeout=0.01, ready=True)
    assert rows[U1]['readiness'] == 'ready'


@pytest.mark.parametrize('field,value', [('readiness', 'sleepy'), ('readiness', 1),
                                         ('ready_at', 'soon'), ('ready_at', -1)])
def test_the_conductor_refuses_bad_readiness(field, value):
    raw = {'uuid': U1, 'vm_state': 'active', 'seq': 1, field: value}
    with pytest.raises(exception.InvalidReport) as err:
        validate.state(raw, 0, 'h1', 10 ** 20)
    assert field in str(err.value)


# The hand-written schema of the first conductor (before readiness and before alembic).
OLD_SCHEMA = """
CREATE TABLE instances (
    uuid TEXT PRIMARY KEY, host TEXT NOT NULL, name TEXT, vm_state TEXT NOT NULL,
    power_state TEXT, task TEXT, fault TEXT, boot_job TEXT, accepted_at REAL, active_at REAL,
    updated_at REAL, seq INTEGER NOT NULL, received_at REAL NOT NULL
);
CREATE INDEX instances_host ON instances(host);
CREATE TABLE reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL, received_at REAL NOT NULL,
    states INTEGER NOT NULL, applied INTEGER NOT NULL
);
CREATE TABLE nodes (
    host TEXT PRIMARY KEY, generation INTEGER NOT NULL, capacity TEXT NOT NULL,
    usage TEXT NOT NULL, inventory TEXT, instances INTEGER NOT NULL, reported_at REAL,
    received_at REAL NOT NULL
);
"""


def test_old_conductor_databases_gain_the_readiness_columns(tmp_path):
    path = str(tmp_path / 'old.sqlite')
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.execute("INSERT INTO instances (uuid, host, vm_state, seq, received_at) "
                "VALUES (?, 'h1', 'active', 1, 1.0)", (U1,))
    old.commit()
    old.close()
    store = db.InstanceStore(path)
    assert store.get(U1)['readiness'] is None
    store.apply_report('h1', [{'uuid': U1, 'vm_state': 'active', 'seq': 2, 'readiness': 'ready',
                               'ready_at': 3.0}])
    assert store.get(U1)['readiness'] == 'ready'


def test_a_listing_read_before_a_channel_event_does_not_undo_it(agent, hv):
    """Start-up and resync apply listings while events already arrive (a restore's
    "connected" follows it at once): the listing's older channel state loses."""
    inst = _booted(agent)
    before = time.time()
    hv.guest_agent(U1)
    _readiness(agent, U1, 'ready')
    stale = vdriver.InstanceInfo(uuid=U1, name='', power_state='running', ours=True,
                                 ready=False, listed_at=before)
    agent.manager.events.apply_listing(inst, stale, 'start-up')
    assert inst.readiness == 'ready'
    newer = vdriver.InstanceInfo(uuid=U1, name='', power_state='running', ours=True,
                                 ready=False, listed_at=time.time())
    agent.manager.events.apply_listing(inst, newer, 'resync')
    assert inst.readiness == 'waiting'
