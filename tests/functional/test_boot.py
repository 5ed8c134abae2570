"""Boot real VMs over RPC: real RabbitMQ, libvirtd and QEMU (TCG here, KVM with one setting)."""
import os
import re
import subprocess
import time
import uuid as uuidlib

import pytest

from prometheus_client import parser

from agent import exception
from tests import trace_format
from tests.functional.conftest import MARKER
from tests.functional.conftest import RUNTIME

pytestmark = pytest.mark.both_runtimes      # tools/run-functional.sh: threading too


def _boot_and_check(node, count: int) -> None:
    specs = [node.spec(name='ftest-%d' % i) for i in range(count)]
    answers = [node.boot(s) for s in specs]
    uuids = [s['uuid'] for s in specs]
    assert [a['uuid'] for a in answers] == uuids
    node.wait_states(uuids, ['active'])
    for a in answers:
        job = node.wait_job(a['job_id'])
        assert job['state'] == 'done', job
        assert job['libvirt_calls'] == 2, job        # define + start: the whole hot path
    for u in uuids:
        node.wait_console(u, MARKER)
    assert node.domains() == set(uuids)
    node.delete(uuids)
    assert node.domains() == set()
    for u in uuids:
        assert not os.path.exists(os.path.join(node.instances, u))


def test_the_agent_runs_in_the_configured_runtime(node):
    """[DEFAULT] runtime is what the process really does: patched by eventlet or not."""
    runtime = node.compute.get_stats(node.host)['runtime']
    assert runtime == {'name': RUNTIME, 'green': RUNTIME == 'eventlet'}


def test_the_agent_opens_its_send_connections_as_it_starts(node):
    """[rpc] send_connections (8) are open before any request needs them: the broker
    counts them for the node's user (with the server's own)."""
    deadline = time.monotonic() + 60
    while node.compute.get_stats(node.host)['rpc']['send_connections'] != 8:
        assert time.monotonic() < deadline, node.log_tail('agent')
        time.sleep(0.2)
    listed = subprocess.run(['rabbitmqctl', '-q', 'list_connections', 'user'],
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed.count('node-' + node.host) >= 8 + 1, listed


def test_boot_one_vm(node):
    _boot_and_check(node, 1)


def test_boot_five_vms_in_parallel(node):
    _boot_and_check(node, 5)


def test_console_output_is_the_tail_of_the_guests_serial_log(node):
    spec = node.spec()
    node.boot(spec)
    node.wait_states([spec['uuid']], ['active'])
    node.wait_console(spec['uuid'], MARKER)
    whole = node.compute.get_console_output(node.host, spec['uuid'])
    assert MARKER in whole['output'] and whole['uuid'] == spec['uuid']
    assert whole['size'] >= len(MARKER) and not whole['truncated']
    tail = node.compute.get_console_output(node.host, spec['uuid'], 10)
    assert tail['truncated'] and 0 < len(tail['output']) <= 10, tail    # chars <= bytes read
    with pytest.raises(exception.InstanceNotFound):
        node.compute.get_console_output(node.host, str(uuidlib.uuid4()))
    node.delete([spec['uuid']])


def test_parallel_boots_are_traced_and_counted_in_metrics(node):
    """The real agent's Chrome trace (written on request) has a well-formed track per boot
    with its two libvirt calls, and /metrics counts the boots."""
    specs = [node.spec() for _ in range(3)]
    for s in specs:
        node.boot(s)
    uuids = [s['uuid'] for s in specs]
    node.wait_states(uuids, ['active'])
    written = node.compute.write_trace(node.host)
    assert written['path'] == node.trace_path and written['dropped'] == 0
    tracks = trace_format.load(node.trace_path)
    for u in uuids:
        events = tracks['instance %s' % u]
        calls = [n for n in trace_format.names_in(events, 'boot job', slices_only=True)
                 if n.startswith('libvirt.')]
        assert calls == ['libvirt.defineXML', 'libvirt.createWithFlags']
        assert trace_format.names_in(events, 'boot_instance')[-1] == 'journal wait'
        assert 'ACTIVE' in trace_format.names_in(events)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in parser.text_string_to_metric_families(node.metrics()) for s in f.samples}
    assert samples[('compute_agent_boot_to_active_seconds_count', ())] >= 3
    stats = node.compute.get_stats(node.host)
    assert (samples[('compute_agent_libvirt_calls_total', (('op', 'createWithFlags'),))]
            == stats['driver']['libvirt_calls']['createWithFlags'])
    node.delete(uuids)


BAD_SPECS = [
    ({'uuid': 'not-a-uuid'}, 'uuid'),
    ({'vcpus': 0}, 'vcpus'),
    ({'vcpus': 10 ** 9}, 'vcpus'),
    ({'memory_mb': -1}, 'memory_mb'),
    ({'memory_mb': 'lots'}, 'memory_mb'),
    ({'name': "<x/>'; rm -rf /"}, 'name'),
    ({'kernel': '../../../etc/passwd'}, 'kernel'),
    ({'initrd': '/etc/shadow'}, 'initrd'),
    ({'image': 'nosuchimage'}, 'image'),
    ({'nics': [{'type': 'bridge', 'bridge': 'nosuchbr0'}]}, 'bridge'),
    ({'colour': 'blue'}, 'unknown fields'),
    ({'user_data': 'x' * (64 * 1024 + 1)}, 'user_data'),
    ({'ssh_keys': ['command="id" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5']}, 'ssh_keys[0]'),
    ({'hostname': 'under_score'}, 'hostname'),
    ({'meta': {'k': 'line\nbreak'}}, 'meta.k'),
]


@pytest.mark.parametrize('bad, field', BAD_SPECS)
def test_bad_input_is_refused_by_boot_instance_and_creates_nothing(node, bad, field):
    spec = node.spec(**bad)
    with pytest.raises(exception.InvalidSpec) as err:
        node.boot(spec)
    assert field in err.value.args[0]
    assert node.domains() == set()
    assert not os.path.exists(os.path.join(node.instances, str(spec['uuid'])))


def test_libvirt_failure_fails_the_job_with_its_reason_and_leaves_no_domain(node):
    spec = node.spec(kernel='bogus-kernel', initrd=None, cmdline=None)
    answer = node.boot(spec)
    job = node.wait_job(answer['job_id'])
    assert job['state'] == 'failed'
    assert 'libvirt createWithFlags failed' in job['reason'] and 'kernel' in job['reason'].lower(), job
    rows = node.wait_states([spec['uuid']], ['error'])
    assert rows[spec['uuid']]['fault'] == job['reason']
    assert node.domains() == set()
    assert not os.path.exists(os.path.join(node.instances, spec['uuid']))
    node.delete([spec['uuid']])


def test_booting_the_same_uuid_twice_makes_one_vm(node):
    spec = node.spec()
    first = node.boot(spec)
    second = node.boot(spec)
    assert second['job_id'] == first['job_id']
    node.wait_states([spec['uuid']], ['active'])
    assert node.domains() == {spec['uuid']}
    node.delete([spec['uuid']])


def test_image_disk_and_bridge_nic_reach_the_guest(node):
    bridge = node.bridge      # the node's [network] bridges allows it
    subprocess.run(['ip', 'link', 'add', 'name', bridge, 'type', 'bridge'], check=True)
    try:
        subprocess.run(['ip', 'link', 'set', bridge, 'up'], check=True)
        mac = '52:54:00:ab:cd:%02x' % (uuidlib.uuid4().int % 256)
        spec = node.spec(image='test-disk.raw',
                         nics=[{'type': 'user'}, {'type': 'bridge', 'bridge': bridge, 'mac': mac}])
        node.boot(spec)
        node.wait_states([spec['uuid']], ['active'])
        console = node.wait_console(spec['uuid'], 'guest-nic: eth1')
        assert re.search(r'guest-disk: vda 2048\b', console), console   # 1 MiB = 2048 sectors
        # The isolated user NIC is QEMU's own device, added after libvirt's: either order.
        assert re.search(r'guest-nic: eth[01] %s' % mac, console), console
        node.delete([spec['uuid']])
    finally:
        subprocess.run(['ip', 'link', 'del', bridge], check=False)


def _libvirtd_pid() -> int:
    with open('/run/libvirtd.pid') as f:
        return int(f.read().strip())


@pytest.mark.disruptive
def test_agent_reconnects_after_libvirtd_restart(node):
    spec = node.spec()
    node.boot(spec)
    node.wait_states([spec['uuid']], ['active'])
    opens = node.compute.get_stats(node.host)['driver']['libvirt_calls']['open']
    pid = _libvirtd_pid()
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while os.path.exists('/proc/%d' % pid):
        assert time.monotonic() < deadline, 'libvirtd did not stop'
        time.sleep(0.05)
    subprocess.run(['/usr/sbin/libvirtd', '-d'], check=True)
    deadline = time.monotonic() + 60
    while True:
        stats = node.compute.get_stats(node.host)['driver']
        if stats['connected'] and stats['libvirt_calls']['open'] > opens:
            break
        assert time.monotonic() < deadline, 'agent did not reconnect: %s' % stats
        time.sleep(0.2)
    # Stop the guest behind the agent's back: only a re-registered event can tell it.
    subprocess.run(['virsh', '-c', 'qemu:///system', 'destroy', 'ca-' + spec['uuid']],
                   check=True, capture_output=True)
    node.wait_states([spec['uuid']], ['stopped'], timeout=60)
    node.delete([spec['uuid']])
    assert node.domains() == set()
