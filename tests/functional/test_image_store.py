"""Images from an image store on the real node: an HTTP server on loopback (in this process)
serves them; the agent downloads each once into its cache through the command worker, boots
copy-on-write overlays on it, and refuses (leaving nothing) what is not the declared image."""
import grp
import hashlib
import os
import subprocess
import time

import pytest

from agent import exception
from tests import image_store
from tests.functional import conftest

MiB = 1024 * 1024


@pytest.fixture(scope='module')
def store():
    s = image_store.Store().start()
    yield s
    s.stop()


@pytest.fixture(scope='module')
def store_node(tmp_path_factory, store):
    conftest._check_node()
    # 40 MiB of cache (see the eviction test)
    node = conftest.Node(str(tmp_path_factory.mktemp('imagestore')), extra_config=(
        '[images]\nsources = %s\ncache_max_gb = %f\nmax_image_gb = 0.1\n'
        'stall_timeout = 30\n' % (store.base, 40 * MiB / 1024 ** 3)))
    yield from conftest._run_node(node)


def image(seed: int, size: int = 8 * MiB) -> bytes:
    """``size`` bytes that are one image's own."""
    return hashlib.sha256(b'%d' % seed).digest() * (size // 32)


def cached(node) -> dict[str, os.stat_result]:
    return {name: os.stat(os.path.join(node.image_cache, name))
            for name in os.listdir(node.image_cache)}


def overlay_matches(node, uuid: str, path: str) -> None:
    """The instance's disk reads as the image (the rest of it zeros): qemu-img compare,
    sharing the running guest's locks."""
    disk = os.path.join(node.instances, uuid, 'disk.qcow2')
    res = subprocess.run(['qemu-img', 'compare', '-U', '-f', 'qcow2', '-F', 'raw', disk, path],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_many_boots_of_a_new_image_share_one_download(store_node, store):
    ref = store.add('shared.raw', image(1))
    store.gate.clear()                 # the store answers once every boot has asked
    specs = [store_node.spec(image_ref=ref, disk_gb=1) for _ in range(6)]
    try:
        for spec in specs:
            store_node.boot(spec)      # each answered at once: the download is the job's
        # one download under way, the five other boots waiting for it (not for a download
        # of their own): then the store answers
        deadline = time.monotonic() + 120
        while store_node.compute.get_stats(store_node.host)['images']['waiting'] < 5:
            assert time.monotonic() < deadline, store_node.log_tail('agent')
            time.sleep(0.1)
    finally:
        store.gate.set()
    uuids = [s['uuid'] for s in specs]
    store_node.wait_states(uuids, ['active'])
    assert [r for r in store.requests if r.endswith('shared.raw')] == ['/img/shared.raw']
    files = cached(store_node)
    st = files[ref['sha256']]
    # read-only: root's, QEMU's group (its overlays' backing file), libvirt left it so
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (
        0, grp.getgrnam('libvirt-qemu').gr_gid, 0o440)
    for uuid in uuids[:2]:
        overlay_matches(store_node, uuid, os.path.join(store_node.image_cache, ref['sha256']))
    log = open(os.path.join(store_node.workdir, 'agent.log')).read()
    assert log.count('image %s downloaded and verified' % ref['sha256'][:12]) == 1
    store_node.delete(uuids)
    assert set(cached(store_node)) == {ref['sha256']}           # kept for the next boots


def test_a_slow_download_logs_its_progress_while_the_node_serves_others(store_node, store):
    ref = store.add('slow.raw', image(2), how='slow')
    slow = store_node.spec(image_ref=ref, disk_gb=1)
    store_node.boot(slow)
    assert store.halfway.wait(120)                   # the download holds half-way
    other = store_node.spec(image='test-disk.raw', disk_gb=1)
    try:
        store_node.boot(other)
        store_node.wait_states([other['uuid']], ['active'])   # not held up by the download
        row = store_node.conductor.wait_instances([slow['uuid']], ['active'], 0)
        assert row[slow['uuid']]['vm_state'] == 'building'
    finally:
        store.resume.set()
    store_node.wait_states([slow['uuid']], ['active'])
    log = open(os.path.join(store_node.workdir, 'agent.log')).read()
    progress = [line for line in log.splitlines()
                if 'downloading image %s: ' % ref['sha256'][:12] in line]
    # 1 MiB reads of 8 MiB: every read crosses a tenth
    assert [line.rsplit(': ', 1)[1].split('%')[0] for line in progress] == [
        '12', '25', '37', '50', '62', '75', '87', '100'], progress
    assert all('[instance: %s]' % slow['uuid'] in line for line in progress)
    store_node.delete([slow['uuid'], other['uuid']])


@pytest.mark.parametrize('how, change, why', [
    ('img', {'sha256': '0' * 64}, 'sha256 mismatch'),
    ('truncated', {}, 'truncated'),
    ('long', {}, 'more bytes than the declared size'),
    ('missing', {}, 'HTTP 404'),
])
def test_a_download_that_is_not_the_declared_image_fails_its_boot_and_leaves_nothing(
        store_node, store, how, change, why):
    ref = dict(store.add('bad-%s.raw' % how, image(3), how=how), **change)
    spec = store_node.spec(image_ref=ref, disk_gb=1)
    store_node.boot(spec)
    row = store_node.wait_states([spec['uuid']], ['error'])[spec['uuid']]
    assert why in row['fault'], row['fault']
    assert ref['sha256'] not in cached(store_node)
    assert not [n for n in os.listdir(store_node.image_cache) if n.startswith('.partial-')]
    assert not os.path.exists(os.path.join(store_node.instances, spec['uuid']))
    assert spec['uuid'] not in store_node.domains()
    store_node.delete([spec['uuid']])


def test_an_image_larger_than_the_node_takes_is_refused_at_once(store_node, store):
    ref = dict(store.add('huge.raw', image(4)), size=int(0.2 * 1024 ** 3))
    spec = store_node.spec(image_ref=ref, disk_gb=1)
    with pytest.raises(exception.InvalidSpec, match='max_image_gb'):
        store_node.boot(spec)
    assert not any(r.endswith('huge.raw') for r in store.requests)


def test_the_least_recently_used_image_is_evicted_to_make_room(store_node, store):
    """12 MiB images in a 40 MiB cache: three fit. One stays in use; four more are booted
    and deleted in turn. Whatever earlier tests left is older, so it goes first."""
    refs = [store.add('lru-%d.raw' % i, image(10 + i, 12 * MiB)) for i in range(5)]
    keep = store_node.spec(image_ref=refs[0], disk_gb=1)
    store_node.boot(keep)                # runs on: its image is pinned
    store_node.wait_states([keep['uuid']], ['active'])
    for ref in refs[1:]:
        spec = store_node.spec(image_ref=ref, disk_gb=1)
        store_node.boot(spec)
        store_node.wait_states([spec['uuid']], ['active'])
        store_node.delete([spec['uuid']])
    assert set(cached(store_node)) == {refs[i]['sha256'] for i in (0, 3, 4)}
    log = open(os.path.join(store_node.workdir, 'agent.log')).read()
    for i in (1, 2):
        assert 'evicted image %s' % refs[i]['sha256'][:12] in log
    store_node.delete([keep['uuid']])
