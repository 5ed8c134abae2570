"""The NoCloud seed on the real node: genisoimage through the command worker, a read-only
disk labelled cidata, read back by the test guest (it mounts it and prints its files)."""
import base64
import grp
import json
import os
import struct


def _key() -> str:
    kind = b'ssh-ed25519'
    blob = struct.pack('>I', len(kind)) + kind + struct.pack('>I', 32) + os.urandom(32)
    return 'ssh-ed25519 %s tester@ci' % base64.b64encode(blob).decode()


def _seed_files(console: str) -> dict[str, str]:
    """The seed's files as the guest printed them ("guest-seed FILE: LINE")."""
    files: dict[str, list[str]] = {}
    for line in console.splitlines():
        if line.startswith('guest-seed ') and ': ' in line:
            name, _, text = line[len('guest-seed '):].partition(': ')
            files.setdefault(name, []).append(text)
    return {name: '\n'.join(lines) + '\n' for name, lines in files.items()}


def test_the_guest_reads_its_hostname_keys_user_data_and_meta_from_its_seed(node):
    key = _key()
    user_data = '#cloud-config\nruncmd:\n  - [sh, -c, "echo seeded > /run/marker"]\n'
    spec = node.spec(hostname='web-1', ssh_keys=[key], user_data=user_data,
                     meta={'role': 'web', 'owner': 'tenant-7'})
    node.boot(spec)
    node.wait_states([spec['uuid']], ['active'])
    console = node.wait_console(spec['uuid'], 'guest-seed: done', timeout=180)
    assert 'guest-seed: vda cidata' in console       # no root disk: the seed is the only one
    files = _seed_files(console)
    assert json.loads(files['meta-data']) == {
        'instance-id': spec['uuid'], 'local-hostname': 'web-1', 'public-keys': [key],
        'meta': {'owner': 'tenant-7', 'role': 'web'}}
    assert files['user-data'] == user_data
    assert json.loads(files['network-config'])['version'] == 2
    # root's, QEMU's group may read it; libvirt left it so (relabel='no').
    seed = os.stat(os.path.join(node.instances, spec['uuid'], 'seed.iso'))
    assert (seed.st_uid, seed.st_gid, seed.st_mode & 0o777) == (
        0, grp.getgrnam('libvirt-qemu').gr_gid, 0o640)
    assert not os.path.exists(os.path.join(node.instances, spec['uuid'], 'seed.d'))
    node.delete([spec['uuid']])
    assert not os.path.exists(os.path.join(node.instances, spec['uuid']))


def test_a_seed_follows_the_root_disk(node):
    spec = node.spec(disk_gb=1, image='test-disk.raw', hostname='db-1')
    node.boot(spec)
    node.wait_states([spec['uuid']], ['active'])
    console = node.wait_console(spec['uuid'], 'guest-seed: done', timeout=180)
    assert 'guest-seed: vdb cidata' in console and 'guest-disk: vda 2097152' in console
    assert json.loads(_seed_files(console)['meta-data'])['local-hostname'] == 'db-1'
    node.delete([spec['uuid']])
