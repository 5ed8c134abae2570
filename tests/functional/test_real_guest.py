"""A real Debian 12 guest (tools/build-real-guest.sh: Debian's packages, cloud-init, its own
qemu-guest-agent) booted through the agent: ready comes from the channel its guest agent
opens, and cloud-init applies the hostname, the SSH key and the user data of the seed. The
results are read back through the guest agent (guest-exec), as an operator would."""
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


@pytest.fixture(scope='module')
def real(node):
    """The node, with the real guest's files in its image directory (sparse copies)."""
    missing = [f for f in FILES if not os.path.exists(os.path.join(conftest.IMAGES, f))]
    assert not missing, '%s missing: run tools/build-real-guest.sh' % ', '.join(missing)
    for name in FILES:
        subprocess.run(['cp', '--sparse=always', os.path.join(conftest.IMAGES, name),
                        node.image_dir], check=True)
    yield node
    for name in FILES:
        os.unlink(os.path.join(node.image_dir, name))


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


def test_a_debian_cloud_image_becomes_the_users_guest(real):
    key = _key()
    user_data = ('#cloud-config\nruncmd:\n  - [sh, -c, "echo seeded-by-user-data > %s"]\n'
                 % MARKER)
    spec = real.spec(vcpus=2, memory_mb=1024, image='debian-real.raw', disk_gb=2,
                     kernel='debian-real-vmlinuz', initrd='debian-real-initrd.img',
                     cmdline='root=/dev/vda console=ttyS0 quiet', hostname='real-1',
                     ssh_keys=[key], user_data=user_data)
    real.boot(spec)
    # Ready: the guest's own qemu-guest-agent opened its channel (libvirt's event).
    rows = real.wait_ready([spec['uuid']], timeout=600)
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
    real.delete([spec['uuid']])
    assert not os.path.exists(os.path.join(real.instances, spec['uuid']))
