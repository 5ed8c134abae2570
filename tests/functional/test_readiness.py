"""Guest readiness by event on real QEMU: the test guest opens its org.qemu.guest_agent.0 port
when its /init runs ("guest-agent-port: open" on its console), libvirt emits its agent-lifecycle
event, and the instance's readiness becomes "ready" with no libvirt call beyond the boot's two.
A guest booted with "ca.noagent" never opens it: it stays active and shows "late" once
``[readiness] expect_within`` passed. A libvirtd restart keeps the flag; a guest reset clears
and restores it by the events of the new connection; an agent restart reads it back from the
channel state in the domain XML its start-up listing reads anyway.
"""
import time

import pytest

from tests.functional import conftest

pytestmark = pytest.mark.both_runtimes      # tools/run-functional.sh: threading too

EXPECT_WITHIN = 20
NOAGENT = 'console=ttyS0 quiet no_timer_check ca.noagent'


@pytest.fixture(scope='module')
def ready_node(tmp_path_factory):
    conftest._check_node()
    workdir = str(tmp_path_factory.mktemp('readynode'))
    # No periodic audit: the libvirt calls of these tests are counted exactly.
    yield from conftest._run_node(conftest.Node(
        workdir, extra_config='[resources]\naudit_interval = 0\n'
                              '[readiness]\nexpect_within = %d\n' % EXPECT_WITHIN))


def _calls(node) -> dict:
    return dict(node.compute.get_stats(node.host)['driver']['libvirt_calls'])


def _wait_row(node, uuid, check, timeout=180.0) -> dict:
    """The conductor's row of ``uuid`` once ``check(row)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        row = node.conductor.get_instance(uuid)
        if row and check(row):
            return row
        assert time.monotonic() < deadline, 'not in time: %s' % row
        time.sleep(0.2)


def test_five_guests_ready_by_event_with_no_polling(ready_node):
    node = ready_node
    before = _calls(node)
    specs = [node.spec() for _ in range(5)]
    for spec in specs:
        node.boot(spec)
    uuids = [s['uuid'] for s in specs]
    rows = node.wait_ready(uuids)
    for uuid, row in rows.items():
        assert row['vm_state'] == 'active' and row['fault'] is None
        assert row['accepted_at'] < row['active_at'] < row['ready_at'], row
        assert row['ready_seen_at'] >= row['ready_at']
        node.wait_console(uuid, 'guest-agent-port: open')
    # Ready came by event: the boots' two RPCs each and nothing else (no listing, no XML).
    after = _calls(node)
    spent = {op: n - before.get(op, 0) for op, n in after.items() if n != before.get(op, 0)}
    assert spent == {'defineXML': 5, 'createWithFlags': 5}, spent
    agent = node.compute.get_instance(node.host, uuids[0])
    assert agent['readiness'] == 'ready' and agent['ready_at'] == rows[uuids[0]]['ready_at']
    print('\nready after the request: %s s' % ', '.join(
        '%.1f' % (r['ready_at'] - r['accepted_at']) for r in rows.values()))
    node.delete(uuids)


def test_guest_that_never_opens_the_port_is_active_not_ready(ready_node):
    node = ready_node
    spec = node.spec(cmdline=NOAGENT)
    node.boot(spec)
    uuid = spec['uuid']
    row = node.wait_states([uuid], ['active'])[uuid]
    assert row['readiness'] in ('waiting', None)       # None: the report before the start
    # Its /init ran (and did not open the port). Under load that may come after
    # expect_within already passed: waiting or late then, never ready.
    node.wait_console(uuid, conftest.MARKER)
    row = node.conductor.get_instance(uuid)
    assert row['readiness'] in ('waiting', 'late') and row['ready_at'] is None, row
    # Past [readiness] expect_within after its start: "late", still active, no fault.
    row = _wait_row(node, uuid, lambda r: r['readiness'] == 'late', timeout=EXPECT_WITHIN + 60)
    assert (row['vm_state'], row['power_state'], row['fault'], row['ready_at']) == \
        ('active', 'running', None, None), row
    assert row['updated_at'] - row['active_at'] >= EXPECT_WITHIN - 1    # not before it
    assert 'guest-agent-port' not in node.console(uuid)
    node.delete([uuid])


def test_state_comes_from_events_not_polling(ready_node):
    """A guest that powers itself off: the agent sees it stop and makes no libvirt call
    for it besides define and start, through boot, idle and power-off. (On this node: no
    periodic audit, whose listing would count too.)"""
    node = ready_node
    before = sum(_calls(node).values())
    spec = node.spec(cmdline='console=ttyS0 quiet no_timer_check ca.poweroff')
    node.boot(spec)
    node.wait_states([spec['uuid']], ['active'])
    rows = node.wait_states([spec['uuid']], ['stopped'])
    assert rows[spec['uuid']]['power_state'] == 'shutdown'
    node.wait_console(spec['uuid'], conftest.MARKER)
    assert sum(_calls(node).values()) - before == 2
    node.delete([spec['uuid']])
    assert node.domains() == set()


@pytest.mark.disruptive
def test_ready_survives_libvirtd_and_agent_restarts(ready_node):
    node = ready_node
    spec = node.spec()
    node.boot(spec)
    uuid = spec['uuid']
    ready_at = node.wait_ready([uuid])[uuid]['ready_at']
    reports = node.conductor.report_count(node.host)
    conftest.stop_libvirtd()
    conftest.start_libvirtd()
    deadline = time.monotonic() + 120
    while not node.compute.get_stats(node.host)['driver']['connected']:
        assert time.monotonic() < deadline, node.log_tail('agent')
        time.sleep(0.2)
    # Reconnected and resynchronised: the flag and its time are kept.
    agent = node.compute.get_instance(node.host, uuid)
    assert (agent['vm_state'], agent['readiness'], agent['ready_at']) == \
        ('active', 'ready', ready_at), agent
    assert node.conductor.get_instance(uuid)['readiness'] == 'ready'
    # The new connection's events: a reset closes the port (waiting), the new boot opens it.
    job = node.wait_job(node.compute.reboot_instance(node.host, uuid, hard=True)['job_id'])
    assert job['state'] == 'done', job
    row = _wait_row(node, uuid, lambda r: r['readiness'] == 'ready' and r['ready_at'] > ready_at)
    assert node.conductor.report_count(node.host) > reports
    assert node.wait_console(uuid, 'guest-agent-port: open', count=2).count(
        'guest-agent-port: open') == 2
    # An agent killed and started again reads the channel state from the domain XML its
    # start-up listing reads anyway.
    node.kill('agent')
    node.start('agent')
    agent = node.compute.get_instance(node.host, uuid)
    assert (agent['vm_state'], agent['readiness']) == ('active', 'ready'), agent
    assert row['ready_at'] <= agent['ready_at']
    node.delete([uuid])
