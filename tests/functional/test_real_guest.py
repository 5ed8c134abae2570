"""A real Debian 12 guest (tools/build-real-guest.sh: Debian's packages, cloud-init, its own
qemu-guest-agent) booted through the agent: ready comes from the channel its guest agent
opens, and cloud-init applies the hostname, the SSH key and the user data of the seed. Then
warm: a restored spare of a cloud-init pool becomes the instance (its clock set, cloud-init
run on the instance's seed) before it is ready. The results are read back through the guest
agent (guest-exec), as an operator would."""
import base64
import json
import os
import struct
import subprocess
import time

import libvirt
import libvirt_qemu
import pytest

from tests.functional import conftest

FILES = ('debian-real.raw', 'debian-real-vmlinuz', 'debian-real-initrd.img')
MARKER = '/var/lib/compute-agent-marker'


def _copy_real_files(image_dir: str) -> None:
    missing = [f for f in FILES if not os.path.exists(os.path.join(conftest.IMAGES, f))]
    assert not missing, '%s missing: run tools/build-real-guest.sh' % ', '.join(missing)
    for name in FILES:
        subprocess.run(['cp', '--sparse=always', os.path.join(conftest.IMAGES, name),
                        image_dir], check=True)


CMDLINE = 'root=/dev/vda console=ttyS0 quiet no_timer_check'
POOL = ('[warm]\npools = debian\nquiet_seconds = 0.5\nready_timeout = 900\n'
        '[warm_pool:debian]\nsize = 1\nvcpus = 1\nmemory_mb = 1024\nimage = debian-real.raw\n'
        'disk_gb = 2\nkernel = debian-real-vmlinuz\ninitrd = debian-real-initrd.img\n'
        'cmdline = %s\nidentity = cloud-init\n' % CMDLINE)


@pytest.fixture(scope='module')
def real_node(tmp_path_factory):
    """A node with the real guest's files whose pool keeps one saved spare of it (identity:
    cloud-init). The first test boots cold on it while the pool's spare is made: two real
    guests boot side by side, which the CI's time needs."""
    conftest._check_node()
    node = conftest.Node(str(tmp_path_factory.mktemp('realwarm')), extra_config=POOL)
    _copy_real_files(node.image_dir)
    yield from conftest._run_node(node)


def _key() -> str:
    kind = b'ssh-ed25519'
    blob = struct.pack('>I', len(kind)) + kind + struct.pack('>I', 32) + os.urandom(32)
    return 'ssh-ed25519 %s tenant@laptop' % base64.b64encode(blob).decode()


def _agent(dom, command: str, arguments: dict | None = None, timeout: int = 60):
    request = {'execute': command}
    if arguments is not None:
        request['arguments'] = arguments
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), timeout, 0))[
        'return']


def _run(dom, argv: list[str], timeout: float = 300.0) -> tuple[int, str]:
    """Run ``argv`` in the guest (qemu-ga guest-exec); its exit code and output, once it has
    exited (the guest agent says so: no guessing at how long it takes)."""
    pid = _agent(dom, 'guest-exec', {'path': argv[0], 'arg': argv[1:],
                                     'capture-output': True})['pid']
    deadline = time.monotonic() + timeout
    while True:
        status = _agent(dom, 'guest-exec-status', {'pid': pid})
        if status['exited']:
            out = base64.b64decode(status.get('out-data', '')).decode(errors='replace')
            return status.get('exitcode', -1), out
        assert time.monotonic() < deadline, '%s still running in the guest' % argv
        time.sleep(0.5)


def test_a_debian_cloud_image_becomes_the_users_guest(real_node):
    key = _key()
    user_data = ('#cloud-config\nruncmd:\n  - [sh, -c, "echo seeded-by-user-data > %s"]\n'
                 % MARKER)
    spec = real_node.spec(vcpus=1, memory_mb=1024, image='debian-real.raw', disk_gb=2,
                          kernel='debian-real-vmlinuz', initrd='debian-real-initrd.img',
                          cmdline=CMDLINE, hostname='real-1', ssh_keys=[key],
                          user_data=user_data)
    real_node.boot(spec)
    # Ready: the guest's own qemu-guest-agent opened its channel (libvirt's event).
    rows = real_node.wait_ready([spec['uuid']], timeout=600)
    assert rows[spec['uuid']]['readiness'] == 'ready'
    conn = libvirt.open(conftest.URI)
    try:
        dom = conn.lookupByUUIDString(spec['uuid'])
        # cloud-init's last stage (runcmd) may still run: wait for cloud-init to say done.
        code, out = _run(dom, ['/usr/bin/cloud-init', 'status', '--wait'], timeout=600)
        if code != 0 or 'done' not in out:
            detail = _run(dom, ['/usr/bin/cloud-init', 'status', '--long'])[1]
            log = _run(dom, ['/bin/sh', '-c', 'grep -E "WARN|ERROR|Trace" '
                                              '/var/log/cloud-init.log | tail -20'])[1]
            raise AssertionError('cloud-init: %s\n%s' % (detail, log))
        assert _run(dom, ['/bin/hostname'])[1].strip() == 'real-1'
        assert _run(dom, ['/bin/cat', MARKER])[1] == 'seeded-by-user-data\n'
        code, keys = _run(dom, ['/bin/cat', '/home/debian/.ssh/authorized_keys'])
        assert code == 0 and key in keys.splitlines(), keys
        code, iid = _run(dom, ['/usr/bin/cloud-init', 'query', 'instance_id'])
        assert iid.strip() == spec['uuid']
    finally:
        conn.close()
    real_node.delete([spec['uuid']])
    assert not os.path.exists(os.path.join(real_node.instances, spec['uuid']))


STALE_S = 20        # a spare this old has a clock this far behind, unless it is set


def test_a_warm_debian_guest_is_the_users_before_it_is_ready(real_node):
    """The pool's spare booted (cloud-init ran as the spare's first boot) and was saved. A
    boot naming the pool restores it; it is ready only after its clock was set and
    cloud-init ran on the instance's own seed: host name, SSH key, user data, instance id."""
    deadline = time.monotonic() + 900
    while not conftest.spare_records(real_node, 'saved'):
        assert time.monotonic() < deadline, 'no spare saved: %s' % real_node.log_tail('agent')
        time.sleep(1)
    saved_at = next(iter(conftest.spare_records(real_node, 'saved').values()))['saved_at']
    # The precondition for the clock check: the spare's clock stands STALE_S behind.
    time.sleep(max(0.0, saved_at + STALE_S - time.time()))
    key = _key()
    user_data = ('#cloud-config\nruncmd:\n  - [sh, -c, "echo warm-user-data > %s"]\n'
                 % MARKER)
    spec = {'uuid': real_node.spec()['uuid'], 'pool': 'debian', 'hostname': 'warm-1',
            'ssh_keys': [key], 'user_data': user_data}
    answer = real_node.boot(spec)
    job = real_node.wait_job(answer['job_id'], timeout=600)
    assert job['state'] == 'done' and job['result'].startswith('warm: hit'), job
    calls = job['libvirt_calls_by_op']
    assert calls['restoreFlags'] == 1 and calls['setTime'] == 1 and calls['guest-exec'] == 1
    row = real_node.wait_ready([spec['uuid']], timeout=60)[spec['uuid']]
    assert row['readiness'] == 'ready'
    conn = libvirt.open(conftest.URI)
    try:
        dom = conn.lookupByUUIDString(real_node.compute.get_instance(
            real_node.host, spec['uuid'])['domain'][len('ca-'):])
        guest_ns = _agent(dom, 'guest-get-time')
        assert abs(guest_ns / 1e9 - time.time()) < 5, 'guest clock off by %.1f s' % (
            guest_ns / 1e9 - time.time())
        assert _run(dom, ['/bin/hostname'])[1].strip() == 'warm-1'
        code, keys = _run(dom, ['/bin/cat', '/home/debian/.ssh/authorized_keys'])
        assert code == 0 and key in keys.splitlines(), keys
        assert _run(dom, ['/usr/bin/cloud-init', 'query', 'instance_id'])[1].strip() == \
            spec['uuid']
        assert _run(dom, ['/bin/cat', MARKER])[1] == 'warm-user-data\n'
    finally:
        conn.close()
    real_node.delete([spec['uuid']])
