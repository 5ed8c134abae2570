"""Instance disks through the manager and the LVM / file backends, over the fake LVM."""
import os
import threading
import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

from agent import exception
from agent import instancedir
from agent.storage import file as file_storage
from tests.unit import fakelvm
from tests.unit.conftest import Agent, boot_spec

U1 = '11111111-2222-3333-4444-555555555555'
GiB = 1024 ** 3


def boot(agent, uuid=U1, **extra):
    answer = agent.manager.requests.boot_instance(boot_spec(uuid, **extra))
    return agent.wait_job(answer['job_id'])


def test_boot_with_disk_creates_a_tagged_lv_and_attaches_it(agent, hv):
    job = boot(agent, disk_gb=2)
    assert job['state'] == 'done' and job['libvirt_calls'] == 2
    lv = agent.lvm.lvs['ca-%s-root' % U1]
    assert lv['size'] == 2 * GiB
    assert lv['tags'] == {'compute-agent', 'ca-instance-' + U1}
    disk = ET.fromstring(hv.domains[U1].xml).find('devices/disk')
    assert disk.get('type') == 'block'
    assert disk.find('source').get('dev') == '/dev/vg0/ca-%s-root' % U1
    assert agent.manager.storage_report()['disks'] == {
        U1: {'name': 'ca-%s-root' % U1, 'size': 2 * GiB}}


def test_delete_zeroes_the_lv_then_removes_it(agent):
    boot(agent, disk_gb=1)
    agent.wait_state(U1, 'active')
    before = len(agent.lvm.launches)
    assert agent.wait_job(agent.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
    assert agent.lvm.lvs == {} and agent.lvm.zeroed == ['ca-%s-root' % U1]
    assert [c for c in agent.lvm.launches[before:] if c != 'lvs' and c != 'vgs'] == [
        'blkdiscard', 'lvremove']


def test_an_lv_that_could_not_be_zeroed_is_kept_and_the_delete_fails(agent):
    boot(agent, disk_gb=1)
    agent.wait_state(U1, 'active')
    agent.lvm.fail['blkdiscard'] = (1, 'blkdiscard: BLKZEROOUT ioctl failed: I/O error')
    job = agent.wait_job(agent.manager.requests.delete_instance(U1)['job_id'])
    assert job['state'] == 'failed' and 'I/O error' in job['reason'], job
    assert list(agent.lvm.lvs) == ['ca-%s-root' % U1]       # never given back unwiped
    assert agent.wait_job(agent.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
    assert agent.lvm.lvs == {} and agent.lvm.zeroed == ['ca-%s-root' % U1]


def test_a_disk_that_does_not_fit_is_refused_at_once_and_nothing_is_made(agent, hv):
    with pytest.raises(exception.InsufficientResources,
                       match=r'disk_gb: 11 requested, more than this node offers instances in '
                             r'all \(10\)'):
        agent.manager.requests.boot_instance(boot_spec(disk_gb=11))
    assert agent.lvm.lvs == {} and hv.domains == {}
    assert agent.manager.requests.list_instances() == [] and agent.manager.jobs.by_state() == {}
    assert 'lvcreate' not in agent.lvm.launches


def test_disks_of_boots_in_progress_count_against_the_vg(agent):
    gate = agent.lvm.gates['lvcreate'] = threading.Event()
    launches = len(agent.lvm.launches)
    first = agent.manager.requests.boot_instance(boot_spec(disk_gb=6))
    with pytest.raises(exception.InsufficientResources, match='disk_gb: 6 requested, 4 of 10 free'):
        agent.manager.requests.boot_instance(boot_spec(str(uuidlib.uuid4()), disk_gb=6))
    gate.set()
    assert agent.wait_job(first['job_id'])['state'] == 'done'
    assert agent.manager.tracker.snapshot()['usage']['disk_gb'] == 6
    # The claim and the refusal ran no LVM command: only the first boot's lvcreate did.
    assert agent.lvm.launches[launches:] == ['lvcreate']


def test_lvs_that_are_not_ours_shrink_the_disk_capacity_at_the_next_audit(agent):
    agent.lvm.lvs['someone-elses'] = {'size': 4 * GiB, 'tags': {'backup'}}
    assert agent.manager.tracker.snapshot()['capacity']['disk_gb'] == 10
    assert agent.manager.audits.audit() == []          # no instance usage changed ...
    assert agent.manager.tracker.snapshot()['capacity']['disk_gb'] == 6   # ... capacity did
    with pytest.raises(exception.InsufficientResources, match='disk_gb: 7 requested, more than'):
        agent.manager.requests.boot_instance(boot_spec(disk_gb=7))
    # Our own LVs never count as someone else's: a boot does not shrink the capacity.
    assert boot(agent, disk_gb=6)['state'] == 'done'
    agent.manager.audits.audit()
    snap = agent.manager.tracker.snapshot()
    assert snap['capacity']['disk_gb'] == 6 and snap['usage']['disk_gb'] == 6


def test_lvm_failure_fails_the_job_with_lvms_message_and_leaves_no_lv(agent, hv):
    agent.lvm.fail['lvcreate'] = (5, '  Volume group "vg0" has insufficient free space '
                                     '(10 extents): 256 required.\n')
    job = boot(agent, disk_gb=1)
    assert job['state'] == 'failed'
    assert job['reason'] == ('storage: lvcreate failed (exit 5): Volume group "vg0" has '
                             'insufficient free space (10 extents): 256 required.')
    assert agent.lvm.lvs == {} and hv.domains == {}
    assert agent.manager.tracker.snapshot()['usage'] == {'vcpus': 0, 'memory_mb': 0, 'disk_gb': 0}


def test_image_write_failure_removes_the_lv(agent, hv):
    agent.lvm.fail['qemu-img'] = (1, 'qemu-img: error while writing: No space left on device\n')
    job = boot(agent, disk_gb=1, image='disk.raw')
    assert job['state'] == 'failed' and 'No space left on device' in job['reason']
    assert agent.lvm.lvs == {} and hv.domains == {}


def test_libvirt_failure_after_the_lv_was_made_removes_the_lv(agent, hv):
    from tests.unit import fakelibvirt
    hv.fail_next['createWithFlags'] = fakelibvirt.libvirtError('cannot open /dev/vg0/x')
    job = boot(agent, disk_gb=1)
    assert job['state'] == 'failed' and 'cannot open' in job['reason']
    assert agent.lvm.lvs == {} and hv.domains == {}


def test_an_lv_that_is_not_ours_is_never_removed(agent):
    agent.lvm.lvs['ca-%s-root' % U1] = {'size': GiB, 'tags': set()}   # made by someone else
    job = boot(agent, disk_gb=1)
    assert job['state'] == 'failed' and 'already exists' in job['reason']
    assert 'ca-%s-root' % U1 in agent.lvm.lvs
    assert agent.manager.storage_report()['disks'] == {}    # untagged: not ours
    # Deleting the failed instance must not take the other LV either.
    assert agent.wait_job(agent.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
    assert 'ca-%s-root' % U1 in agent.lvm.lvs


def test_status_sweep_over_50_lvs_runs_one_lvs(agent):
    for i in range(50):
        u = str(uuidlib.UUID(int=i + 1))
        agent.lvm.lvs['ca-%s-root' % u] = {'size': GiB, 'tags': {'compute-agent',
                                                                 'ca-instance-' + u}}
    agent.storage._sweep.invalidate()
    before = list(agent.lvm.launches)
    gate = agent.lvm.gates['lvs'] = threading.Event()
    answers = []
    askers = [threading.Thread(target=lambda i=i: answers.append(
        agent.manager.storage_report([str(uuidlib.UUID(int=i + 1))])['disks']))
        for i in range(50)]
    for t in askers:
        t.start()
    gate.set()
    for t in askers:
        t.join()
    assert sorted(len(a) for a in answers) == [1] * 50
    new = agent.lvm.launches[len(before):]
    assert new.count('lvs') == 1 and new.count('vgs') == 1


def test_a_vg_that_is_missing_stops_the_agent_from_starting(conf, hv):
    with pytest.raises(exception.ConfigError, match='Volume group "nosuchvg" not found'):
        Agent(conf, hv, lvm=fakelvm.FakeLvm('vg0'), vg='nosuchvg')


def test_file_backend_makes_a_qcow2_overlay(conf, hv):
    a = Agent(conf, hv, backend='file')
    try:
        job = boot(a, disk_gb=1, image='disk.raw')
        assert job['state'] == 'done'
        disk = ET.fromstring(hv.domains[U1].xml).find('devices/disk')
        path = os.path.join(conf.instances_path, U1, 'disk.qcow2')
        assert disk.get('type') == 'file' and disk.find('source').get('file') == path
        assert disk.find('driver').get('type') == 'qcow2' and disk.find('transient') is None
        create = [c for c in a.lvm.launches if c == 'qemu-img']
        assert create == ['qemu-img']
    finally:
        a.stop()


@pytest.mark.parametrize('backend', ['lvm', 'file'])
def test_boot_while_libvirt_is_disconnected_leaves_no_disk_and_no_directory(conf, hv, backend):
    a = Agent(conf, hv, backend=backend)
    try:
        a.driver.host.mark_disconnected()
        job = boot(a, disk_gb=1)
        assert job['state'] == 'failed' and 'not connected' in job['reason']
        assert a.lvm.lvs == {} and hv.domains == {}
        assert os.listdir(conf.instances_path) == []
    finally:
        a.stop()


def test_disk_smaller_than_the_image_is_refused(agent, image_dir):
    with open(image_dir / 'big.raw', 'wb') as f:
        f.truncate(2 * GiB)
    with pytest.raises(exception.InvalidSpec, match='smaller than image big.raw'):
        agent.manager.requests.boot_instance(boot_spec(disk_gb=1, image='big.raw'))


def test_file_backend_never_offers_the_reserve_kept_for_the_journal(tmp_path):
    # Issue 11: instance disks could take 100 % of the filesystem that holds the journal.
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    reserve = 64 << 20
    backend = file_storage.FileBackend(None, instancedir.InstanceDirs(str(tmp_path)),
                                       reserved_bytes=reserve)
    offered = backend.inventory().instance_bytes
    assert free - reserve - (16 << 20) <= offered <= free - reserve    # others write too
    everything = file_storage.FileBackend(None, instancedir.InstanceDirs(str(tmp_path)),
                                          reserved_bytes=free * 2)
    assert everything.inventory().instance_bytes == 0


def test_file_backend_lists_a_disk_once_not_again_through_a_resumed_spares_link(tmp_path):
    """The link a resumed hot spare leaves (agent.instancedir) leads to its instance's
    directory: its disk is the instance's, never an orphan of the spare's name to delete."""
    dirs = instancedir.InstanceDirs(str(tmp_path))
    inst, spare = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    dirs.create(inst)
    with open(os.path.join(dirs.path(inst), file_storage.DISK_NAME), 'wb') as f:
        f.truncate(1 << 20)
    os.symlink(inst, dirs.path(spare))
    backend = file_storage.FileBackend(None, dirs, reserved_bytes=0)
    assert list(backend.disks()) == [inst]


def test_file_backend_never_lists_a_directory_being_made_or_removed(tmp_path):
    """An audit during a removal (the directory renamed to .removing-<uuid>-*) counted its
    disk as another instance's (found by a crash-point test under load)."""
    dirs = instancedir.InstanceDirs(str(tmp_path))
    inst = str(uuidlib.uuid4())
    dirs.create(inst)
    for name in (inst, '.removing-%s-0a1b2c3d' % inst, '.making-%s-0a1b2c3d' % inst):
        os.makedirs(os.path.join(tmp_path, name), exist_ok=True)
        with open(os.path.join(tmp_path, name, file_storage.DISK_NAME), 'wb') as f:
            f.truncate(1 << 20)
    backend = file_storage.FileBackend(None, dirs, reserved_bytes=0)
    assert list(backend.disks()) == [inst]
