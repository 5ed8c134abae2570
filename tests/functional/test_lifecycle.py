"""Stop, start, reboot and the console on real QEMU: graceful and forced stops, soft and hard
reboots, a guest's own power-off, a refused transition, a stop racing a delete. (A crash in the
middle of a stop, a start or a reboot: tests/functional/test_crash_points.py.)

The test guest powers off on the ACPI power button once its /init runs (the line
"guest-acpi: power button" on its console); with "ca.noacpi" on its command line it ignores the
button, as a hung guest or one without acpid does.
"""
import time

import libvirt
import pytest

from agent import exception
from tests.functional import conftest

NOACPI = 'console=ttyS0 quiet no_timer_check ca.noacpi'
# No periodic audit: its listing would count among the libvirt calls a test compares.
POWER = ('[power]\nstop_timeout = 60\nacpi_retry_interval = 5\nreboot_timeout = 8\n'
         '[resources]\naudit_interval = 0\n')


@pytest.fixture(scope='module')
def life_node(tmp_path_factory):
    conftest._check_node()
    workdir = str(tmp_path_factory.mktemp('lifenode'))
    yield from conftest._run_node(conftest.Node(workdir, extra_config=POWER))


def _active(node, **extra):
    """One instance booted, ACTIVE, and its guest ready: its /init runs (its power button's
    input device was opened before the marker) and no readiness change is still to come."""
    spec = node.spec(**extra)
    node.boot(spec)
    rows = node.conductor.wait_instances([spec['uuid']], ['active'], 180, ready=True)
    assert rows[spec['uuid']]['readiness'] == 'ready', rows
    node.wait_console(spec['uuid'], conftest.MARKER)
    return spec['uuid']


def _row(node, uuid) -> dict:
    return node.conductor.get_instance(uuid)


def _libvirt_state(uuid) -> int:
    conn = libvirt.open(conftest.URI)
    try:
        return conn.lookupByUUIDString(uuid).state()[0]
    finally:
        conn.close()


def _settled(node, uuid, vm_state, timeout=60.0) -> dict:
    """The conductor's row once it shows ``vm_state`` with no task."""
    deadline = time.monotonic() + timeout
    while True:
        row = _row(node, uuid)
        if row and row['vm_state'] == vm_state and row['task'] is None:
            return row
        assert time.monotonic() < deadline, 'not %s in time: %s' % (vm_state, row)
        time.sleep(0.2)


def test_graceful_stop_then_start(life_node):
    node = life_node
    uuid = _active(node)
    job = node.wait_job(node.compute.stop_instance(node.host, uuid)['job_id'])
    assert (job['state'], job['result'], job['libvirt_calls']) == ('done', 'graceful', 1), job
    node.wait_console(uuid, 'guest-acpi: power button')
    _settled(node, uuid, 'stopped')
    assert _libvirt_state(uuid) == libvirt.VIR_DOMAIN_SHUTOFF        # defined, kept
    job = node.wait_job(node.compute.start_instance(node.host, uuid)['job_id'])
    assert (job['state'], job['result'], job['libvirt_calls']) == ('done', 'started', 1), job
    row = _settled(node, uuid, 'active')
    assert row['power_state'] == 'running'
    # The console kept the first boot and shows the second.
    node.wait_console(uuid, conftest.MARKER, count=2)
    out = node.compute.get_console_output(node.host, uuid, max_bytes=4096)
    assert conftest.MARKER in out['output'] and out['size'] >= len(out['output'])
    node.delete([uuid])


def test_a_guest_that_ignores_the_button_is_stopped_at_once_after_the_timeout(life_node):
    node = life_node
    uuid = _active(node, cmdline=NOACPI)
    job = node.wait_job(node.compute.stop_instance(node.host, uuid, timeout=3)['job_id'])
    assert (job['state'], job['result']) == ('done', 'forced'), job
    assert job['libvirt_calls_by_op'] == {'shutdownFlags': 1, 'destroy': 1}, job
    _settled(node, uuid, 'stopped')
    assert _libvirt_state(uuid) == libvirt.VIR_DOMAIN_SHUTOFF
    node.delete([uuid])


def test_soft_and_hard_reboot(life_node):
    node = life_node
    uuid = _active(node)
    job = node.wait_job(node.compute.reboot_instance(node.host, uuid)['job_id'])
    assert (job['state'], job['result'], job['libvirt_calls']) == ('done', 'soft', 1), job
    node.wait_console(uuid, 'guest-acpi: power button')
    node.wait_console(uuid, conftest.MARKER, count=2)
    job = node.wait_job(node.compute.reboot_instance(node.host, uuid, hard=True)['job_id'])
    assert (job['state'], job['result'], job['libvirt_calls']) == ('done', 'hard', 1), job
    node.wait_console(uuid, conftest.MARKER, count=3)
    row = _settled(node, uuid, 'active')
    assert row['power_state'] == 'running' and _libvirt_state(uuid) == libvirt.VIR_DOMAIN_RUNNING
    node.delete([uuid])


def test_a_soft_reboot_the_guest_ignores_becomes_a_reset(life_node):
    node = life_node
    uuid = _active(node, cmdline=NOACPI)
    job = node.wait_job(node.compute.reboot_instance(node.host, uuid)['job_id'])
    assert (job['state'], job['result']) == ('done', 'hard (soft timed out)'), job
    assert job['libvirt_calls_by_op'] == {'reboot': 2, 'reset': 1}, job   # 8 s, every 5 s
    _settled(node, uuid, 'active')
    node.delete([uuid])


def test_a_guests_own_power_off_then_start(life_node):
    node = life_node
    spec = node.spec(disk_gb=1, cmdline='console=ttyS0 quiet no_timer_check ca.poweroff=once')
    node.boot(spec)
    uuid = spec['uuid']
    node.wait_console(uuid, 'guest-poweroff: first boot')
    row = _settled(node, uuid, 'stopped')
    assert row['power_state'] == 'shutdown' and row['fault'] is None
    job = node.wait_job(node.compute.start_instance(node.host, uuid)['job_id'])
    assert job['state'] == 'done', job
    node.wait_console(uuid, 'guest-poweroff: not again')
    _settled(node, uuid, 'active')
    node.delete([uuid])


def test_start_of_a_running_instance_is_refused_and_changes_nothing(life_node):
    node = life_node
    uuid = _active(node)
    before = (node.compute.get_instance(node.host, uuid), node.libvirt_calls(),
              node.compute.get_stats(node.host)['manager']['jobs_total'])
    with pytest.raises(exception.InstanceInvalidState, match='is active: it cannot start'):
        node.compute.start_instance(node.host, uuid)
    after = (node.compute.get_instance(node.host, uuid), node.libvirt_calls(),
             node.compute.get_stats(node.host)['manager']['jobs_total'])
    assert after == before
    node.delete([uuid])


def test_a_stop_racing_a_delete(life_node):
    node = life_node
    uuid = _active(node, cmdline=NOACPI)
    stop = node.compute.stop_instance(node.host, uuid, timeout=60)
    delete = node.compute.delete_instance(node.host, uuid)
    stop_job, delete_job = node.wait_job(stop['job_id']), node.wait_job(delete['job_id'])
    assert stop_job['state'] == 'failed' and 'superseded' in stop_job['reason'], stop_job
    assert delete_job['state'] == 'done', delete_job
    node.wait_states([uuid], ['deleted'])
    assert uuid not in node.domains()
