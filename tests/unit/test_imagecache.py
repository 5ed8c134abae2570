"""Images from an image store: references checked, downloads verified, one download per image
however many boots ask, least recently used images evicted, nothing left by a failure. The
download code is the worker's own (agent.storage.fetch), against a real HTTP server on
loopback in this process."""
import hashlib
import json
import os
import threading

import pytest

from agent import exception
from agent import imageref
from agent import spec as specmod
from agent.storage import fetch
from agent.storage import imagecache
from agent.storage import operations
from tests import image_store
from tests.unit import qcow2
from tests.unit.conftest import Agent, boot_spec, wait_until

U1 = '11111111-2222-3333-4444-555555555555'
MiB = 1024 * 1024


def uuid(i: int) -> str:
    return '%08d-2222-3333-4444-555555555555' % i


@pytest.fixture
def store():
    s = image_store.Store().start()
    yield s
    s.stop()


@pytest.fixture
def cache_dir(tmp_path):
    d = tmp_path / 'image-cache'
    d.mkdir()
    return str(d)


def ref_of(d: dict) -> imageref.ImageRef:
    return imageref.ImageRef(**d)


# -- references -----------------------------------------------------------------------------
SOURCES = ('http://store.example:8080/images/', 'file:///srv/images/')
SHA = 'ab' * 32


@pytest.mark.parametrize('value, why', [
    ('http://store.example:8080/images/a.raw', 'must be an object'),
    ({'url': 'x', 'sha256': SHA, 'size': 1, 'extra': 1}, 'unknown fields'),
    ({'url': SOURCES[0] + 'a', 'sha256': SHA.upper(), 'size': 1}, 'sha256'),
    ({'url': SOURCES[0] + 'a', 'sha256': SHA[:-1], 'size': 1}, 'sha256'),
    ({'url': SOURCES[0] + 'a', 'sha256': SHA, 'size': 0}, 'size'),
    ({'url': SOURCES[0] + 'a', 'sha256': SHA, 'size': True}, 'size'),
    ({'url': SOURCES[0] + 'a', 'sha256': SHA, 'size': 1 << 40}, 'more than this node takes'),
    ({'url': 'ftp://store.example:8080/images/a', 'sha256': SHA, 'size': 1}, 'scheme'),
    ({'url': 'http://store.example:8080@evil.example/images/a', 'sha256': SHA, 'size': 1},
     'no user name'),
    ({'url': 'http://store.example:8081/images/a', 'sha256': SHA, 'size': 1}, 'not below'),
    ({'url': 'http://store.example:8080/imagesX/a', 'sha256': SHA, 'size': 1}, 'not below'),
    ({'url': SOURCES[0] + '../secret', 'sha256': SHA, 'size': 1}, '".."'),
    ({'url': SOURCES[0] + '%2e%2e/secret', 'sha256': SHA, 'size': 1}, '".."'),
    ({'url': SOURCES[0] + 'a%2fb', 'sha256': SHA, 'size': 1}, 'encoded'),
    ({'url': SOURCES[0] + 'a#frag', 'sha256': SHA, 'size': 1}, 'fragment'),
    ({'url': SOURCES[0] + 'dir/', 'sha256': SHA, 'size': 1}, 'must name a file'),
    ({'url': SOURCES[0] + 'a b', 'sha256': SHA, 'size': 1}, 'printable ASCII'),
    ({'url': 'file:///etc/shadow', 'sha256': SHA, 'size': 1}, 'not below'),
    ({'url': 'file://host/srv/images/a', 'sha256': SHA, 'size': 1}, 'local path only'),
])
def test_a_bad_reference_is_refused_saying_why(value, why):
    with pytest.raises(imageref.Refused, match=why):
        imageref.parse(value, SOURCES, 1 << 30)


def test_a_node_without_sources_downloads_nothing():
    with pytest.raises(imageref.Refused, match=r'\[images\] sources is empty'):
        imageref.parse({'url': SOURCES[0] + 'a', 'sha256': SHA, 'size': 1}, (), 1 << 30)


def test_the_spec_takes_an_image_ref_alone_and_keeps_it_through_the_journal(conf):
    limits = specmod.Limits(image_dir=conf.image_dir, image_sources=SOURCES)
    ref = {'url': SOURCES[1] + 'debian.qcow2', 'sha256': SHA, 'size': 5}
    spec = specmod.validate_boot_spec(boot_spec(image_ref=ref, disk_gb=1), limits)
    assert spec.image_ref == imageref.ImageRef(**ref) and spec.image is None
    assert specmod.BootSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for extra, why in (({'image': 'disk.raw'}, 'not with image'),
                       ({'pool': 'small'}, 'not with a warm pool'),
                       ({}, r'\[images\] sources is empty')):
        with pytest.raises(exception.InvalidSpec, match='image_ref: .*' + why):
            specmod.validate_boot_spec(
                boot_spec(image_ref=ref, **extra),
                limits if extra else specmod.Limits(image_dir=conf.image_dir))


def test_the_worker_takes_a_cached_image_only_by_its_digest():
    policy = operations.Policy(image_dir='/srv/images', cache_dir='/var/cache/img')
    args = {'uuid': U1, 'size': 1 << 30, 'format': 'raw'}
    operations.build('qcow2_create', dict(args, image='/var/cache/img/' + SHA),
                     operations.Policy(instances_path='/i', cache_dir='/var/cache/img'))
    for image in ('/var/cache/img/.partial-%s-1' % SHA, '/var/cache/img/other',
                  '/var/cache/img/../img/' + SHA, '/etc/' + SHA):
        with pytest.raises(operations.Refused):
            operations.build('image_to_lv', dict(args, vg='vg0', image=image),
                             operations.Policy(volume_group='vg0', image_dir='/srv/images',
                                               cache_dir='/var/cache/img'))
    assert policy.cache_dir == '/var/cache/img'


# -- downloads ------------------------------------------------------------------------------
def test_a_download_is_verified_then_named_by_its_digest_read_only(store, cache_dir):
    data = os.urandom(20 * MiB + 5)         # 21 chunks: each tenth is crossed on its own
    ref = ref_of(store.add('a.raw', data))
    seen = []
    path = fetch.fetch(ref, cache_dir, (store.base,), 5, 60,
                       fetch.Progress(ref.size,
                                      lambda done, total: seen.append(done * 10 // total)))
    assert path == os.path.join(cache_dir, ref.sha256)
    assert os.listdir(cache_dir) == [ref.sha256]
    with open(path, 'rb') as f:
        assert f.read() == data
    assert os.stat(path).st_mode & 0o777 == 0o440
    assert seen == list(range(1, 11))           # each tenth once, by bytes


@pytest.mark.parametrize('how, change, why', [
    ('img', {'sha256': '00' * 32}, 'sha256 mismatch'),
    ('img', {'size': 'smaller'}, 'the source has'),
    ('truncated', {}, r'transfer broke|truncated'),
    ('long', {}, 'more bytes than the declared size'),
    ('missing', {}, 'HTTP 404'),
    ('redirect', {}, 'redirects are not followed'),
    ('stall', {}, 'nothing received for too long'),
])
def test_a_bad_download_is_refused_and_leaves_nothing(store, cache_dir, how, change, why):
    good = store.add('a.raw', os.urandom(MiB))
    d = dict(good, url=store.base + '%s/a.raw' % how)
    if change.get('size') == 'smaller':
        change = {'size': good['size'] - 1}
    with pytest.raises(fetch.FetchError, match=why):
        fetch.fetch(ref_of(dict(d, **change)), cache_dir, (store.base,), 1, 60)
    assert os.listdir(cache_dir) == []


def test_a_file_source_is_read_below_its_directory_only(tmp_path, cache_dir):
    src = tmp_path / 'store'
    src.mkdir()
    data = b'image' * 1000
    (src / 'a.raw').write_bytes(data)
    (src / 'link.raw').symlink_to(src / 'a.raw')
    sha = hashlib.sha256(data).hexdigest()
    sources = ('file://%s/' % src,)
    ref = imageref.ImageRef('file://%s/a.raw' % src, sha, len(data))
    assert fetch.fetch(ref, cache_dir, sources, 5, 60) == os.path.join(cache_dir, sha)
    os.unlink(os.path.join(cache_dir, sha))
    for url, why in (('file://%s/link.raw' % src, 'Too many levels of symbolic links'),
                     ('file://%s/a.raw' % tmp_path, 'not below')):
        with pytest.raises(fetch.FetchError, match=why):
            fetch.fetch(imageref.ImageRef(url, sha, len(data)), cache_dir, sources, 5, 60)
    assert os.listdir(cache_dir) == []


def test_the_worker_answers_a_fetch_with_progress_lines_first(store, cache_dir):
    ref = store.add('a.raw', os.urandom(20 * MiB + 5))
    lines = []
    answer = fetch.run(ref, operations.Policy(cache_dir=cache_dir, image_sources=(store.base,)),
                       lambda done, total: lines.append((done, total)))
    assert answer['rc'] == 0 and answer['stdout'] == os.path.join(cache_dir, ref['sha256'])
    assert len(lines) == 10 and lines[-1] == (ref['size'], ref['size'])
    refused = fetch.run(ref, operations.Policy(cache_dir=cache_dir), lambda *a: None)
    assert refused['rc'] == 1 and 'sources is empty' in refused['stderr']


# -- the cache ------------------------------------------------------------------------------
@pytest.fixture
def node(conf, hv, store):
    a = Agent(conf, hv, image_sources=(store.base,), cache_max=4 * MiB)
    yield a
    a.stop()


def _spec(conf, store, ref: dict, uuid: str = U1, **extra) -> specmod.BootSpec:
    limits = specmod.Limits(image_dir=conf.image_dir, image_sources=(store.base,))
    return specmod.validate_boot_spec(boot_spec(uuid, image_ref=ref, **extra), limits)


def pins(node) -> dict:
    out = {}
    for uuid_, path in node.dirs.owned().items():
        pin = os.path.join(path, imagecache.PIN)
        if os.path.exists(pin):
            with open(pin) as f:
                out[uuid_] = f.read().strip()
    return out


def _boots_at_once(node, conf, store, ref: dict, n: int) -> tuple[dict, list]:
    """``n`` boots of ``ref`` at once; the store answers once the first one asked and all the
    others wait for its download. (results by index, errors)."""
    results, errors = {}, []

    def boot(i):
        try:
            results[i] = node.images.resolve(_spec(conf, store, ref, uuid(i)))
        except Exception as exc:
            errors.append(exc)
    store.gate.clear()
    threads = [threading.Thread(target=boot, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    wait_until(lambda: node.images.stats()['waiting'] == n - 1 and store.requests,
               what='one download and %d boots waiting for it' % (n - 1))
    store.gate.set()
    for t in threads:
        t.join(10)
    return results, errors


def test_many_boots_of_a_new_image_share_one_download(node, store, conf):
    ref = store.add('a.raw', os.urandom(MiB))
    results, errors = _boots_at_once(node, conf, store, ref, 8)
    assert not errors and len(results) == 8
    assert store.requests == ['/img/a.raw']           # one download for all eight
    path = os.path.join(node.images.cache_dir, ref['sha256'])
    assert {r.image for r in results.values()} == {path}
    assert all(r.image_format == 'raw' and r.files[-1].path == path for r in results.values())
    assert pins(node) == {uuid(i): ref['sha256'] for i in range(8)}
    counts = node.images.stats()
    assert counts['downloads'] == 1 and counts['shared'] == 7 and counts['hits'] == 0


def test_a_failed_download_fails_every_boot_waiting_for_it_and_pins_nothing(node, store, conf):
    ref = dict(store.add('a.raw', os.urandom(MiB)), sha256='00' * 32)
    results, errors = _boots_at_once(node, conf, store, ref, 4)
    assert not results and len(errors) == 4
    assert all(isinstance(e, exception.InvalidImage) and 'sha256 mismatch' in str(e)
               for e in errors), errors
    assert store.requests == ['/img/a.raw'] and os.listdir(node.images.cache_dir) == []
    assert pins(node) == {} and node.dirs.owned() == {}
    assert node.images.stats()['downloading'] == 0


def test_the_least_recently_used_unpinned_image_makes_room(node, store, conf):
    refs = [store.add('%d.raw' % i, os.urandom(MiB + i)) for i in range(4)]
    for i in range(3):                        # 3 MiB in a 4 MiB cache
        node.images.resolve(_spec(conf, store, refs[i], uuid(i)))
    node.images.unpin(uuid(0))
    node.images.unpin(uuid(2))
    node.images.resolve(_spec(conf, store, refs[0], uuid(10)))     # 0 used again: newest
    node.images.unpin(uuid(10))
    node.images.resolve(_spec(conf, store, refs[3], uuid(3)))      # needs room: 2 goes
    cached = set(os.listdir(node.images.cache_dir))
    assert cached == {refs[0]['sha256'], refs[1]['sha256'], refs[3]['sha256']}
    assert node.images.stats()['evicted'] == 1
    assert uuid(2) not in node.dirs.owned()          # its pin went with its empty directory


def test_a_cache_full_of_images_in_use_refuses_and_leaves_nothing(node, store, conf):
    refs = [store.add('%d.raw' % i, os.urandom(2 * MiB - 1)) for i in range(3)]
    node.images.resolve(_spec(conf, store, refs[0], uuid(0)))
    node.images.resolve(_spec(conf, store, refs[1], uuid(1)))
    with pytest.raises(exception.StorageError, match='image cache full'):
        node.images.resolve(_spec(conf, store, refs[2], uuid(2)))
    assert len(os.listdir(node.images.cache_dir)) == 2 and uuid(2) not in node.dirs.owned()


def test_partial_downloads_a_crash_left_are_removed_at_start(node):
    partial = os.path.join(node.images.cache_dir, '%s%s-99' % (fetch.PARTIAL, SHA))
    with open(partial, 'wb') as f:
        f.write(b'half')
    assert node.images.init() == {'images': 0, 'bytes': 0}
    assert os.listdir(node.images.cache_dir) == []


# -- boots ----------------------------------------------------------------------------------
def _boot(agent, **fields):
    return agent.wait_job(agent.manager.requests.boot_instance(boot_spec(**fields))['job_id'])


def test_an_lvm_boot_copies_the_cached_image_and_does_not_pin_it(node, store):
    ref = store.add('a.raw', os.urandom(MiB))
    job = _boot(node, image_ref=ref, disk_gb=1)
    assert job['state'] == 'done' and job['libvirt_calls'] == 2, job
    assert 'fetch' in node.lvm.launches and 'qemu-img' in node.lvm.launches
    assert pins(node) == {}                           # the LV is a copy
    assert os.listdir(node.images.cache_dir) == [ref['sha256']]
    assert _boot(node, uuid=uuid(2), image_ref=ref, disk_gb=1)['state'] == 'done'
    assert store.requests == ['/img/a.raw']


def test_a_file_boot_is_an_overlay_on_the_cached_image_pinned_until_deleted(conf, hv, store):
    a = Agent(conf, hv, backend='file', image_sources=(store.base,))
    try:
        ref = store.add('a.raw', os.urandom(MiB))
        assert _boot(a, image_ref=ref, disk_gb=1)['state'] == 'done'
        assert pins(a) == {U1: ref['sha256']}
        import xml.etree.ElementTree as ET
        backing = ET.fromstring(hv.domains[U1].xml).find('devices/disk/backingStore/source')
        assert backing.get('file') == os.path.join(a.images.cache_dir, ref['sha256'])
        assert a.wait_job(a.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
        assert pins(a) == {} and os.listdir(a.images.cache_dir) == [ref['sha256']]
    finally:
        a.stop()


def test_a_downloaded_qcow2_that_names_another_file_is_refused_and_removed(node, store):
    evil = qcow2.header(size=1 << 30, backing=b'/etc/shadow')
    job = _boot(node, image_ref=store.add('evil.qcow2', evil), disk_gb=1)
    assert job['state'] == 'failed' and 'backing file' in job['reason'], job
    assert os.listdir(node.images.cache_dir) == [] and pins(node) == {}
    assert node.storage.disks() == {} and U1 not in node.hv.domains
    assert node.dirs.owned() == {}


def test_a_boot_whose_download_fails_ends_in_error_and_leaves_nothing(node, store):
    ref = dict(store.add('a.raw', os.urandom(MiB)), url=store.base + 'missing/a.raw')
    job = _boot(node, image_ref=ref, disk_gb=1)
    assert job['state'] == 'failed' and 'HTTP 404' in job['reason'], job
    node.wait_state(U1, 'error')
    assert os.listdir(node.images.cache_dir) == [] and node.dirs.owned() == {}
    assert node.storage.disks() == {} and U1 not in node.hv.domains
