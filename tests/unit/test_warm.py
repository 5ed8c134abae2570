"""Warm boots over the fake libvirt (which keeps saved images and checks restores as libvirt
does) and the file storage backend: pools, spares, the warm path, restarts and crashes."""
import dataclasses
import json
import os
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from agent import context
from agent import exception
from agent import resources
from agent.warm import restore as restoremod
from agent.storage import seeds as seedsmod
from agent.virt.libvirt import config as vconfig
from agent.virt.libvirt import spares as vspares
from agent.warm import pools as poolsmod
from agent.warm import spares as sparesmod
from tests.unit import fakelibvirt
from tests.unit.conftest import Agent, boot_spec, wait_until

U1 = '11111111-2222-3333-4444-555555555555'
U2 = '22222222-2222-3333-4444-555555555555'
U3 = '33333333-2222-3333-4444-555555555555'
TINY = poolsmod.Pool(name='tiny', size=2, flavor=(
    ('vcpus', 1), ('memory_mb', 96), ('kernel', 'vmlinuz'), ('initrd', 'initrd.img'),
    ('cmdline', 'console=ttyS0'), ('disk_gb', 1)))
WARM = {'quiet_seconds': 0.0, 'ready_timeout': 5.0, 'retry_interval': 1.0, 'tick': 0.01,
        'settle_seconds': 0.0}


def warm_agent(conf, hv, **kw):
    hv.auto_ready = True            # every guest opens its agent channel once started
    return Agent(conf, hv, backend='file', pools={'tiny': TINY}, warm=dict(WARM, **kw))


def fill(a, n):
    for _ in range(n):
        assert a.manager.warm.filler.make(TINY) is not None
    return a.manager.warm.spares.available()


def warm_spec(uuid=U1, **extra):
    return dict({'uuid': uuid, 'pool': 'tiny'}, **extra)


# -- pools and specs (pure) ------------------------------------------------------------------
def test_a_pool_spec_takes_the_pools_flavor():
    whole = poolsmod.apply({'uuid': U1, 'pool': 'tiny', 'memory_mb': 96}, {'tiny': TINY})
    assert whole['kernel'] == 'vmlinuz' and whole['disk_gb'] == 1 and whole['nics'] == []
    assert poolsmod.apply({'uuid': U1}, {'tiny': TINY}) == {'uuid': U1}


@pytest.mark.parametrize('raw, why', [
    ({'pool': 'big'}, "no warm pool 'big'"),
    ({'pool': 'tiny', 'memory_mb': 128}, 'memory_mb: pool tiny boots 96'),
    ({'pool': 'tiny', 'image': 'disk.raw'}, 'image: pool tiny has none'),
    ({'pool': 'tiny', 'nics': [{'type': 'user', 'mac': '52:54:00:00:00:01'}]},
     "keeps its spare's MAC"),
    ({'pool': 'tiny', 'nics': [{'type': 'user'}]}, 'has 0 user NIC'),
])
def test_a_pool_spec_that_asks_for_what_the_spares_are_not_is_refused(raw, why):
    with pytest.raises(exception.InvalidSpec, match=why):
        poolsmod.apply(dict(raw, uuid=U1), {'tiny': TINY})


def test_the_restore_xml_keeps_the_spares_identity_and_takes_the_instances():
    saved = vconfig.GuestConfig(
        uuid=U2, name='spare', virt_type='qemu', arch='x86_64', vcpus=1, memory_mb=96,
        console_log='/i/%s/console.log' % U2, kernel='/k',
        disks=(vconfig.DiskConfig(path='/i/%s/disk.qcow2' % U2, format='qcow2'),),
        genid=True, identity_socket='/i/%s/identity.sock' % U2,
        metadata=(('host', 'node1'), ('role', 'spare'))).to_xml()
    saved = saved.replace('<genid />', '<genid>g-1</genid>')
    xml = vconfig.restore_xml(saved, 'web-1', (('uuid', U1), ('host', 'node1')),
                              {'vda': '/i/%s/disk.qcow2' % U1}, '/i/%s/console.log' % U1,
                              '/i/%s/identity.sock' % U1)
    root = ET.fromstring(xml)
    assert (root.findtext('uuid'), root.findtext('name'), root.findtext('genid')) == (
        U2, 'ca-' + U2, 'g-1')
    assert vconfig.parse_metadata(xml) == {'uuid': U1, 'host': 'node1'}
    assert root.find('devices/disk/source').get('file') == '/i/%s/disk.qcow2' % U1
    assert root.find('devices/serial/source').get('path') == '/i/%s/console.log' % U1
    ident = [c for c in root.findall('devices/channel')
             if c.find('target').get('name') == vconfig.IDENTITY_CHANNEL]
    assert ident[0].find('source').get('path') == '/i/%s/identity.sock' % U1


# -- spares ----------------------------------------------------------------------------------
def test_a_spare_is_booted_until_ready_saved_and_held_as_reserved_disk(conf, hv):
    a = warm_agent(conf, hv)
    try:
        before = dict(a.driver.host.calls)
        spare, = fill(a, 1)
        calls = {k: v - before.get(k, 0) for k, v in a.driver.host.calls.items()
                 if v != before.get(k, 0)}
        assert calls == {'createXML': 1, 'lookupByUUIDString': 1, 'saveFlags': 1,
                         'saveImageGetXMLDesc': 1}
        assert hv.domains == {}                     # saved: the spare's domain is gone
        d = os.path.join(conf.instances_path, spare.uuid)
        assert sorted(os.listdir(d)) == sorted(['.compute-agent-instance', 'disk.qcow2',
                                                'memory.save', 'spare.json'])
        with open(os.path.join(d, 'spare.json')) as f:
            assert json.load(f)['state'] == 'saved'
        report = a.manager.resource_report()
        assert report['reserved'] == {'vcpus': 0, 'memory_mb': 0, 'disk_gb': 1}
        assert report['usage'] == {'vcpus': 0, 'memory_mb': 0, 'disk_gb': 1}
        assert report['instances'] == 0
        assert ET.fromstring(spare.xml).findtext('genid')      # restored with the same one
    finally:
        a.stop()


def test_a_spare_whose_guest_never_becomes_ready_is_removed(conf, hv):
    a = warm_agent(conf, hv, ready_timeout=0.2)
    hv.auto_ready = False
    try:
        assert a.manager.warm.filler.make(TINY) is None
        assert hv.domains == {} and os.listdir(conf.instances_path) == []
        assert a.manager.resource_report()['usage']['disk_gb'] == 0
        assert a.manager.warm.filler.next_pool() is None       # not again before retry_interval
    finally:
        a.stop()


def test_the_filler_keeps_the_pool_full_only_while_no_job_runs(conf, hv):
    a = warm_agent(conf, hv, quiet_seconds=0.3)
    try:
        job = a.manager.requests.boot_instance(boot_spec(U1))['job_id']   # a boot: not quiet
        assert a.manager.warm.filler.next_pool() is None
        a.wait_job(job)
        a.runtime.spawn(a.manager.warm.run)
        wait_until(lambda: a.manager.warm.spares.counts().get('tiny') == 2, what='pool full')
        assert a.manager.stats()['warm']['made'] == 2
        assert a.manager.warm.filler.next_pool() is None       # full
    finally:
        a.stop()


# -- the warm path ---------------------------------------------------------------------------
def test_a_warm_boot_is_one_restore_and_the_instance_is_ready_at_once(conf, hv):
    a = warm_agent(conf, hv)
    try:
        spare = fill(a, 1)[0]
        before = dict(a.driver.host.calls)
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec(name='web-1'))['job_id'])
        assert job['state'] == 'done'
        assert job['result'] == 'warm: hit, spare %s of pool tiny' % spare.uuid
        assert job['libvirt_calls_by_op'] == {'restoreFlags': 1, 'defineXML': 1}
        a.wait_state(U1, 'active')
        wait_until(lambda: a.manager.instances[U1].readiness == 'ready', what='ready')
        inst = a.manager.requests.get_instance(U1)
        assert inst['domain'] == 'ca-' + spare.uuid and inst['power_state'] == 'running'
        [line] = [json.loads(line) for line in hv.domains[spare.uuid].identity_lines()]
        assert abs(line.pop('time') - time.time()) < 60      # the host's clock, to set its own
        assert line == {'uuid': U1, 'name': 'web-1', 'pool': 'tiny', 'seq': line['seq']}
        dom = hv.domains[spare.uuid]
        assert not dom.transient and vconfig.parse_metadata(dom.xml)['uuid'] == U1
        assert os.path.exists(os.path.join(conf.instances_path, U1, 'disk.qcow2'))
        assert not os.path.exists(os.path.join(conf.instances_path, spare.uuid))
        report = a.manager.resource_report()
        assert report['reserved']['disk_gb'] == 0 and report['usage']['disk_gb'] == 1
        calls = {k: v - before.get(k, 0) for k, v in a.driver.host.calls.items()
                 if v != before.get(k, 0)}
        assert calls == {'restoreFlags': 1, 'defineXML': 1}      # no lookup, no polling
    finally:
        a.stop()


def test_a_warm_instance_is_ready_only_once_its_guest_acknowledged_its_identity(conf, hv):
    a = warm_agent(conf, hv)
    try:
        spare = fill(a, 1)[0]
        hv.identity_acks = False              # the guest reads its identity, answers later
        job = a.manager.requests.boot_instance(warm_spec())['job_id']
        wait_until(lambda: spare.uuid in hv.domains, what='restored')
        dom = hv.domains[spare.uuid]
        first = json.loads(dom.identity_lines()[0])
        inst = a.manager.instances[U1]
        wait_until(lambda: inst.channel_open, what='channel open')
        assert inst.readiness == 'waiting' and inst.identity_pending
        # What a hostile or confused guest writes is ignored: not JSON, another line's
        # number, no clock, a number that is not one.
        for junk in (b'ready\n', b'{"ack": %d, "clock": 1}\n' % (first['seq'] + 7),
                     b'{"ack": %d}\n' % first['seq'], b'{"ack": "%d", "clock": 1}\n' % first['seq'],
                     b'[1, 2]\n'):
            dom.ack_identity(line=junk)
        wait_until(lambda: a.driver.stats()['identity_answers_ignored'] == 5, what='read')
        assert inst.readiness == 'waiting' and inst.identity_pending
        dom.ack_identity()                    # the answer to the line it read: ready
        wait_until(lambda: inst.readiness == 'ready', what='ready once acknowledged')
        assert not inst.identity_pending
        assert a.wait_job(job)['state'] == 'done'      # then made persistent
        assert not dom.transient
    finally:
        a.stop()


def test_a_reset_guest_is_told_its_identity_again_and_is_ready_once_it_answers(conf, hv):
    a = warm_agent(conf, hv)
    try:
        spare = fill(a, 1)[0]
        a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        inst = a.manager.instances[U1]
        wait_until(lambda: inst.readiness == 'ready', what='ready')
        dom = hv.domains[spare.uuid]
        hv.identity_acks = False
        hv.guest_agent(spare.uuid, connected=False)     # the guest reboots by itself:
        hv.emit_reboot(dom)                             # its channel closes, it resets
        lines = [json.loads(x) for x in dom.identity_lines(count=2)]
        assert lines[1]['uuid'] == U1 and lines[1]['seq'] > lines[0]['seq']
        hv.guest_agent(spare.uuid)                      # its agent is back: not yet itself
        wait_until(lambda: inst.channel_open, what='channel open')
        assert inst.readiness == 'waiting' and inst.identity_pending and inst.reboots == 1
        dom.ack_identity(conn=dom.identity_conns[0],    # the old connection's answer: too late
                         line=b'{"ack": %d, "clock": 1}\n' % lines[0]['seq'])
        dom.ack_identity()
        wait_until(lambda: inst.readiness == 'ready', what='ready again')
        assert inst.readies == 2
    finally:
        a.stop()


def test_a_warm_instance_stops_starts_and_deletes_like_any_other(conf, hv):
    a = warm_agent(conf, hv)
    try:
        spare = fill(a, 1)[0]
        a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert a.wait_job(a.manager.requests.stop_instance(U1, timeout=0)['job_id'])['state'] == 'done'
        assert hv.domains[spare.uuid].run_state == 5          # shut off, still defined
        assert a.wait_job(a.manager.requests.start_instance(U1)['job_id'])['state'] == 'done'
        a.wait_state(U1, 'active')
        # a new QEMU: its guest learns its identity again
        assert json.loads(hv.domains[spare.uuid].identity_lines()[0])['uuid'] == U1
        assert a.wait_job(a.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
        assert hv.domains == {} and os.listdir(conf.instances_path) == []
    finally:
        a.stop()


def test_a_start_that_finds_the_domain_running_leaves_the_identity_alone(conf, hv):
    a = warm_agent(conf, hv)
    try:
        a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        inst = a.manager.instances[U1]
        wait_until(lambda: inst.readiness == 'ready', what='ready')
        a.wait_job(a.manager.requests.stop_instance(U1, timeout=0)['job_id'])
        # started behind the agent's back meanwhile: libvirt says it runs already
        hv.fail_next['createWithFlags'] = fakelibvirt.libvirtError(
            'Requested operation is not valid: domain is already running',
            fakelibvirt.VIR_ERR_OPERATION_INVALID)
        job = a.wait_job(a.manager.requests.start_instance(U1)['job_id'])
        assert job['result'] == 'already running'
        assert not inst.identity_pending        # nothing was started, nothing is awaited
    finally:
        a.stop()


def test_a_warm_boot_with_an_empty_pool_boots_cold_and_says_so(conf, hv):
    a = warm_agent(conf, hv)
    try:
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['state'] == 'done' and job['result'] == 'warm: miss, pool empty'
        assert job['libvirt_calls_by_op'] == {'defineXML': 1, 'createWithFlags': 1}
        root = ET.fromstring(hv.domains[U1].xml)       # the same devices as a spare's
        assert root.find('genid') is not None
        assert vconfig.IDENTITY_CHANNEL in [c.find('target').get('name')
                                            for c in root.findall('devices/channel')]
    finally:
        a.stop()


def test_a_pool_instance_booted_cold_is_ready_once_its_guest_answered_too(conf, hv):
    a = warm_agent(conf, hv)
    try:
        hv.identity_acks = False
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['result'] == 'warm: miss, pool empty'
        inst = a.manager.instances[U1]
        wait_until(lambda: inst.channel_open, what='channel open')
        hv.domains[U1].identity_lines()
        assert inst.readiness == 'waiting' and inst.identity_pending
        hv.domains[U1].ack_identity()
        wait_until(lambda: inst.readiness == 'ready', what='ready')
    finally:
        a.stop()


def test_a_restore_libvirt_refuses_falls_back_to_a_cold_boot(conf, hv):
    a = warm_agent(conf, hv)
    try:
        spare = fill(a, 1)[0]
        hv.fail_next['restoreFlags'] = fakelibvirt.libvirtError(
            'image is corrupt', fakelibvirt.VIR_ERR_OPERATION_FAILED)
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['state'] == 'done'
        assert job['result'].startswith('cold (warm: restore failed: ')
        assert job['result'].endswith('image is corrupt)')
        assert U1 in hv.domains and spare.uuid not in os.listdir(conf.instances_path)
        assert a.manager.warm.spares.counts() == {'tiny': 0}
        assert a.manager.resource_report()['usage']['disk_gb'] == 1
    finally:
        a.stop()


def test_a_boot_may_not_name_an_unknown_pool_and_nothing_is_recorded(conf, hv):
    a = warm_agent(conf, hv)
    try:
        with pytest.raises(exception.InvalidSpec, match='no warm pool'):
            a.manager.requests.boot_instance(warm_spec(pool='other'))
        assert a.manager.instances == {} and a.manager.jobs.by_state() == {}
    finally:
        a.stop()


# -- restarts and crashes ------------------------------------------------------------------------
def test_spares_and_warm_instances_survive_a_restart(conf, hv):
    a = warm_agent(conf, hv)
    spare, kept = fill(a, 2)
    a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
    a.stop()
    b = warm_agent(conf, hv)
    try:
        assert [s.uuid for s in b.manager.warm.spares.available()] == [kept.uuid]
        assert b.manager.requests.get_instance(U1)['domain'] == 'ca-' + spare.uuid
        assert b.manager.requests.get_instance(U1)['vm_state'] == 'active'
        assert b.manager.resource_report()['reserved']['disk_gb'] == 1
        assert b.manager.reconciled['spares_kept'] == 1
        # the mapping is back: power operations reach the spare's domain
        assert b.wait_job(b.manager.requests.reboot_instance(U1, hard=True)['job_id'])['state'] == 'done'
        assert b.wait_job(b.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
        assert sorted(os.listdir(conf.instances_path)) == [kept.uuid]
    finally:
        b.stop()


@pytest.mark.parametrize('pools, left', [
    ({'tiny': TINY}, 2),
    ({'tiny': dataclasses.replace(TINY, size=1)}, 1),                # shrunk: the oldest kept
    ({'tiny': dataclasses.replace(TINY, flavor=TINY.flavor[:-1] + (('disk_gb', 2),))}, 0),
    ({}, 0),                                                          # no longer configured
])
def test_at_start_up_only_the_spares_the_pools_want_are_kept(conf, hv, pools, left):
    a = warm_agent(conf, hv)
    oldest = fill(a, 2)[0]
    a.stop()
    b = Agent(conf, hv, backend='file', pools=pools, warm=WARM)
    try:
        wait_until(lambda: not b.manager.warm.leftovers(), what='the others removed')
        kept = b.manager.warm.spares.available()
        assert len(kept) == left and (not kept or kept[0].uuid == oldest.uuid)
        assert sorted(os.listdir(conf.instances_path)) == sorted(s.uuid for s in kept)
        assert b.manager.resource_report()['reserved']['disk_gb'] == left
    finally:
        b.stop()


def test_at_start_up_a_spare_whose_kernel_was_replaced_is_removed(conf, hv, image_dir):
    a = warm_agent(conf, hv)
    fill(a, 2)
    a.stop()
    replace_file(image_dir / 'vmlinuz')
    b = warm_agent(conf, hv)
    try:
        assert b.manager.warm.spares.available() == []
        wait_until(lambda: not b.manager.warm.leftovers(), what='the spares removed')
        assert os.listdir(conf.instances_path) == []
        assert b.manager.reconciled['spares_removed'] == 2
        assert b.manager.resource_report()['reserved']['disk_gb'] == 0
    finally:
        b.stop()


def test_a_restart_serves_while_the_spares_it_did_not_keep_are_removed(conf, hv):
    """Spares start-up does not keep (here: their pool is no longer configured) are removed
    after it, one after another: each LV is zeroed first, seconds on a node. Meanwhile they
    are neither orphans nor audited, and the filler makes no spare before they are gone."""
    hv.auto_ready = True
    a = Agent(conf, hv, backend='lvm', pools={'tiny': TINY}, warm=WARM)
    first, second = fill(a, 2)
    a.stop()
    held = a.lvm.gates['lvremove'] = threading.Event()
    other = dataclasses.replace(TINY, name='other', size=1)
    b = Agent(conf, hv, lvm=a.lvm, backend='lvm', pools={'other': other}, warm=WARM)
    filler = threading.Thread(target=b.manager.warm.run, daemon=True)
    try:
        assert b.manager.reconciled['spares_removed'] == 2
        wait_until(lambda: 'lvremove' in a.lvm.launches, what='the first removal held')
        assert b.manager.warm.leftovers() == {first.uuid, second.uuid}
        assert len(a.lvm.lvs) == 2
        assert b.manager.audits.audit() == []               # not judged while they go
        filler.start()
        filler.join(0.3)
        assert filler.is_alive()                            # no spare begun meanwhile
        assert not b.manager.warm.spares.making and b.manager.warm.spares.available() == []
        held.set()
        wait_until(lambda: not b.manager.warm.leftovers(), what='both removed')
        wait_until(lambda: b.manager.warm.spares.counts().get('other') == 1,
                   what='the pool filled once they were gone')
        assert [lv for lv in a.lvm.lvs] == [
            'ca-%s-root' % s.uuid for s in b.manager.warm.spares.available()]
        assert b.manager.tracker.counts['audit_corrections'] == 0
    finally:
        held.set()
        b.manager.warm.stop()
        filler.join(10)
        b.stop()


def replace_file(path):
    """Another file at the same path, same size: only device/inode/mtime tell."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


# -- stale spares, one claim -----------------------------------------------------------------
def retired(a, n):
    wait_until(lambda: a.manager.stats()['warm']['retired'] == n, what='%d retired' % n)


def test_a_spare_whose_initrd_was_replaced_is_retired_at_the_take(conf, hv, image_dir):
    a = warm_agent(conf, hv)
    try:
        spare, = fill(a, 1)
        replace_file(image_dir / 'initrd.img')
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['state'] == 'done' and job['result'] == 'warm: miss, pool empty'
        retired(a, 1)
        assert sorted(os.listdir(conf.instances_path)) == [U1]     # the spare went whole
        assert a.manager.resource_report()['reserved']['disk_gb'] == 0
    finally:
        a.stop()


def test_a_spare_older_than_max_spare_age_is_retired_not_handed_out(conf, hv):
    a = warm_agent(conf, hv, max_spare_age=0)      # every saved spare is too old at once
    try:
        fill(a, 2)
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['result'] == 'warm: miss, pool empty'
        retired(a, 2)
        assert a.manager.warm.spares.counts() == {'tiny': 0}
        assert sorted(os.listdir(conf.instances_path)) == [U1]
    finally:
        a.stop()


def test_the_filler_retires_spares_past_their_age_while_quiet(conf, hv):
    a = warm_agent(conf, hv, max_spare_age=0)
    try:
        fill(a, 1)
        a.manager.warm.filler.next_pool()       # quiet: the old one goes first
        retired(a, 1)
        assert a.manager.resource_report()['reserved']['disk_gb'] == 0
    finally:
        a.stop()


def test_a_node_whose_only_free_disk_is_the_spares_boots_warm(conf, hv):
    a = warm_agent(conf, hv)
    try:
        fill(a, 1)
        a.manager.tracker.set_inventory(disk_gb=1)      # all of it reserved by the spare
        with pytest.raises(exception.InsufficientResources, match='disk_gb'):
            a.manager.requests.boot_instance(boot_spec(U2, disk_gb=1))     # cold: no room
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['state'] == 'done' and job['result'].startswith('warm: hit'), job
        report = a.manager.resource_report()
        assert report['usage']['disk_gb'] == 1 and report['reserved']['disk_gb'] == 0
        assert report['instances'] == 1
    finally:
        a.stop()


def test_a_warm_boot_the_journal_refuses_gives_its_spare_back(conf, hv, monkeypatch):
    a = warm_agent(conf, hv)
    try:
        spare, = fill(a, 1)
        blocker = threading.Event()         # a commit that hangs: the boot's row stays pending
        real_write = a.journal._write
        monkeypatch.setattr(a.journal, '_write', lambda *x: (blocker.wait(10), real_write(*x)))
        a.journal.put({'id': 'x', 'kind': 'boot', 'uuid': U2, 'state': 'done',
                       'created_at': 1.0})
        wait_until(lambda: a.journal._writing, what='a commit under way')
        real_wait = a.journal.wait
        monkeypatch.setattr(a.journal, 'wait', lambda ticket, timeout=30: real_wait(ticket, 0.2))
        with pytest.raises(exception.JournalUnavailable):
            a.manager.requests.boot_instance(warm_spec())
        monkeypatch.setattr(a.journal, 'wait', real_wait)
        blocker.set()
        a.journal.flush(10)
        assert [s.uuid for s in a.manager.warm.spares.available()] == [spare.uuid]
        assert a.manager.resource_report()['reserved']['disk_gb'] == 1    # its own again
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['result'] == 'warm: hit, spare %s of pool tiny' % spare.uuid
    finally:
        a.stop()


def test_a_crash_while_a_spare_is_saved_leaves_nothing_after_the_restart(conf, hv):
    a = warm_agent(conf, hv)
    gate = hv.gates['saveFlags'] = threading.Event()
    a.runtime.spawn(a.manager.warm.filler.make, TINY)
    wait_until(lambda: 'saveFlags' in hv.calls, what='the save to begin')
    a.crash()
    b = warm_agent(conf, hv)
    try:
        assert hv.domains == {}                       # the spare's domain: destroyed
        wait_until(lambda: not b.manager.warm.leftovers(), what='the spare removed')
        assert os.listdir(conf.instances_path) == []  # its disk and directory: removed
        assert b.manager.reconciled['spares_removed'] == 1
        assert b.manager.resource_report()['usage']['disk_gb'] == 0
    finally:
        gate.set()
        b.stop()


def test_a_crash_during_a_restore_leaves_no_orphan_and_the_boot_runs_again(conf, hv):
    a = warm_agent(conf, hv)
    first, second = fill(a, 2)
    gate = hv.gates['restoreFlags'] = threading.Event()
    job_id = a.manager.requests.boot_instance(warm_spec())['job_id']
    wait_until(lambda: 'restoreFlags' in hv.calls, what='the restore to begin')
    a.crash()
    del hv.gates['restoreFlags']
    b = warm_agent(conf, hv)
    try:
        job = b.wait_job(job_id)
        assert (job['state'], job['reason'], job['attempts']) == ('done', None, 2)
        assert job['result'] == 'warm: hit, spare %s of pool tiny' % second.uuid
        assert sorted(os.listdir(conf.instances_path)) == [U1]     # the taken spare: gone
        assert list(hv.domains) == [second.uuid]
        assert b.manager.resource_report()['usage']['disk_gb'] == 1
    finally:
        gate.set()
        b.stop()


# -- configuration -------------------------------------------------------------------------------
def _pool_conf(tmp_path, image_dir, text):
    from oslo_config import cfg
    from agent.conf import warm as conf_warm
    path = tmp_path / 'pools.conf'
    path.write_text(text)
    c = cfg.ConfigOpts()
    conf_warm.register_opts(c)
    c(['--config-file', str(path)], project='compute-agent-test', default_config_files=[])
    return c


POOL_CONF = ('[warm]\npools = tiny\n[warm_pool:tiny]\nsize = 3\nmemory_mb = 96\n'
             'kernel = vmlinuz\ninitrd = initrd.img\ndisk_gb = 1\n')


def test_pools_come_from_their_own_groups_and_are_checked_as_specs(tmp_path, image_dir):
    from agent import spec as specmod
    limits = specmod.Limits(image_dir=str(image_dir))
    pools = poolsmod.pools_from_conf(_pool_conf(tmp_path, image_dir, POOL_CONF), limits)
    assert pools['tiny'].size == 3 and dict(pools['tiny'].flavor)['memory_mb'] == 96
    bad = POOL_CONF.replace('kernel = vmlinuz', 'kernel = missing')
    with pytest.raises(exception.ConfigError, match=r"\[warm_pool:tiny\] .*kernel"):
        poolsmod.pools_from_conf(_pool_conf(tmp_path, image_dir, bad), limits)
    with pytest.raises(exception.ConfigError, match='not a valid pool name'):
        poolsmod.pools_from_conf(_pool_conf(tmp_path, image_dir, '[warm]\npools = a/b\n'),
                                 limits)


@pytest.mark.parametrize('ready', [False, True])     # still booting, or ready and settling
def test_a_spare_being_made_gives_way_to_a_job(conf, hv, ready):
    a = warm_agent(conf, hv, settle_seconds=30.0)
    hv.auto_ready = ready
    try:
        filler = a.manager.warm.filler
        a.runtime.spawn(filler.make, TINY)
        wait_until(lambda: 'createXML' in hv.calls, what='the spare to start')
        a.wait_job(a.manager.requests.boot_instance(boot_spec(U1))['job_id'])    # ...when a boot comes
        wait_until(lambda: filler.gave_way == 1, what='the spare to give way')
        assert list(hv.domains) == [U1] and os.listdir(conf.instances_path) == [U1]
        assert filler.failures == 0 and a.manager.warm.spares.counts() == {}
    finally:
        a.stop()


def test_a_spare_being_booted_when_the_agent_stops_is_removed_first(conf, hv):
    """A spare is a transient domain: left running, it would outlive the agent."""
    a = warm_agent(conf, hv)
    hv.auto_ready = False                     # its guest never gets ready
    try:
        filler = a.manager.warm.filler
        a.runtime.spawn(filler.run)
        wait_until(lambda: 'createXML' in hv.calls, what='the spare to start')
        a.manager.warm.stop()
        assert hv.domains == {} and os.listdir(conf.instances_path) == []
        assert filler.gave_way == 1 and a.manager.warm.spares.counts() == {}
        created = hv.calls.count('createXML')
        time.sleep(0.3)                       # several ticks: nothing is begun any more
        assert hv.calls.count('createXML') == created and filler.next_pool() is None
    finally:
        a.stop()


def test_a_domain_copying_a_warm_instances_metadata_is_not_taken(conf, hv):
    a = warm_agent(conf, hv)
    spare = fill(a, 1)[0]
    a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
    # someone defines another domain whose metadata names the same instance
    fake = str(__import__('uuid').uuid4())
    xml = hv.domains[spare.uuid].xml.replace(spare.uuid, fake)
    copy = fakelibvirt.Domain(hv.connections[0], fake, 'ca-' + fake, xml)
    hv.domains = {fake: copy, **hv.domains}          # listed first
    a.stop()
    b = warm_agent(conf, hv)
    try:
        assert b.manager.requests.get_instance(U1)['domain'] == 'ca-' + spare.uuid
        assert b.wait_job(b.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
        assert list(hv.domains) == [fake]            # the copy: never touched
    finally:
        b.stop()


def test_on_lvm_a_warm_instance_takes_its_spares_lv_by_one_retag(conf, hv):
    from agent import spec as specmod
    from agent.storage import operations
    hv.auto_ready = True
    a = Agent(conf, hv, backend='lvm', pools={'tiny': TINY}, warm=WARM)
    try:
        spare = fill(a, 1)[0]
        lv = operations.lv_name(spare.uuid)
        assert 'ca-instance-' + spare.uuid in a.lvm.lvs[lv]['tags']
        before = list(a.lvm.launches)
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['state'] == 'done' and job['result'].startswith('warm: hit')
        assert a.lvm.launches[len(before):] == ['lvchange']      # the hand-over: one command
        assert a.lvm.lvs[lv]['tags'] == {'compute-agent', 'ca-instance-' + U1}
        disk = ET.fromstring(hv.domains[spare.uuid].xml).find('devices/disk/source')
        assert disk.get('dev') == '/dev/%s/%s' % (a.lvm.vg, lv)
        assert a.wait_job(a.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
        assert a.lvm.lvs == {} and hv.domains == {}
    finally:
        a.stop()
    with pytest.raises(operations.Refused, match='uuid'):
        operations.build('lv_retag', {'vg': a.lvm.vg, 'uuid': U1, 'owner': '../x'},
                         operations.Policy(volume_group=a.lvm.vg))
    assert specmod.is_canonical_uuid(U1)


def test_a_boot_with_the_uuid_of_a_spare_or_a_warm_instances_domain_is_refused(conf, hv):
    """A saved spare's uuid, and the libvirt uuid a warm instance runs as: taken. Refused
    before any libvirt call, with nothing recorded or changed (a define with the warm
    instance's domain uuid would replace that domain's definition)."""
    a = warm_agent(conf, hv)
    try:
        taken, saved = fill(a, 2)
        a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])       # runs as ``taken``
        assert a.manager.requests.get_instance(U1)['domain'] == 'ca-' + taken.uuid
        xml, calls = hv.domains[taken.uuid].xml, len(hv.calls)
        jobs = a.manager.stats()['jobs_total']
        for uuid in (taken.uuid, saved.uuid):
            with pytest.raises(exception.UuidInUse) as err:
                a.manager.requests.boot_instance(boot_spec(uuid))
            assert str(err.value).startswith('uuid: %s is in use by ' % uuid)
        assert len(hv.calls) == calls and hv.domains[taken.uuid].xml == xml
        assert a.manager.stats()['jobs_total'] == jobs
        assert set(a.manager.instances) == {U1}
        assert [s.uuid for s in a.manager.warm.spares.available()] == [saved.uuid]
    finally:
        a.stop()


# -- a cloud-init pool: the instance's seed, the guest's clock, cloud-init via the guest agent
CLOUD = poolsmod.Pool(name='debian', size=1, flavor=TINY.flavor, identity='cloud-init',
                      identity_timeout=5.0)


def _seed_of(xml: str, dev: str = 'vdb') -> str:
    for disk in ET.fromstring(xml).findall('devices/disk'):
        if disk.find('target').get('dev') == dev:
            return disk.find('source').get('file')
    raise AssertionError('no %s' % dev)


def _seed_meta(path: str) -> dict:
    with open(path, 'rb') as f:
        return json.loads(json.loads(f.read().rstrip(b'\0'))['files']['meta-data'])


def test_a_cloud_init_pools_restore_runs_cloud_init_on_the_instances_seed(conf, hv):
    hv.auto_ready = True
    a = Agent(conf, hv, backend='file', pools={'debian': CLOUD}, warm=WARM)
    try:
        assert a.manager.warm.filler.make(CLOUD) is not None
        spare = a.manager.warm.spares.available()[0]
        spare_seed = _seed_of(spare.xml)
        assert _seed_meta(spare_seed)['instance-id'] == spare.uuid   # its own first boot
        job = a.wait_job(a.manager.requests.boot_instance(
            {'uuid': U1, 'pool': 'debian', 'hostname': 'web-1'})['job_id'])
        assert job['state'] == 'done' and job['result'].startswith('warm: hit'), job
        # one restore, the clock, cloud-init started and watched, then the define
        assert job['libvirt_calls_by_op'] == {'restoreFlags': 1, 'setTime': 1, 'guest-exec': 1,
                                              'guest-exec-status': 2, 'defineXML': 1}
        dom = hv.domains[spare.uuid]
        seed = _seed_of(dom.xml)
        assert seed == os.path.join(conf.instances_path, U1, 'seed.iso')
        assert _seed_meta(seed) == {'instance-id': U1, 'local-hostname': 'web-1'}
        assert os.path.getsize(seed) == seedsmod.SEED_SIZE     # the spare's seed's: the device's
        assert abs(hv.guest_times[spare.uuid]['seconds'] - time.time()) < 60
        # in the spare: saved once its cloud-init's first boot was over; then the instance's
        assert hv.guest_execs[spare.uuid] == [
            {'path': '/usr/bin/cloud-init', 'arg': ['status', '--wait'], 'capture-output': True},
            {'path': '/bin/sh', 'arg': ['-c', restoremod.APPLY_SEED, 'sh', '/dev/vdb'],
             'capture-output': True}]
        inst = a.manager.instances[U1]
        assert inst.readiness == 'ready' and not inst.identity_pending
    finally:
        a.stop()


def test_a_cloud_init_run_that_fails_removes_the_restored_guest_and_boots_cold(conf, hv):
    hv.auto_ready = True
    a = Agent(conf, hv, backend='file', pools={'debian': CLOUD}, warm=WARM)
    try:
        assert a.manager.warm.filler.make(CLOUD) is not None
        spare = a.manager.warm.spares.available()[0]
        hv.exec_exitcode = 1
        hv.identity_acks = False        # a real image: nothing answers on an identity port
        job = a.wait_job(a.manager.requests.boot_instance(
            {'uuid': U1, 'pool': 'debian', 'hostname': 'web-1'})['job_id'])
        assert job['state'] == 'done', job
        assert job['result'].startswith('cold (warm: restore failed: cloud-init in the guest '
                                        'failed (exit 1): cloud-init: boom'), job['result']
        assert spare.uuid not in hv.domains                    # the restored guest is gone
        assert U1 in hv.domains                                # booted cold, with its seed
        assert _seed_meta(_seed_of(hv.domains[U1].xml))['local-hostname'] == 'web-1'
        wait_until(lambda: a.manager.instances[U1].readiness == 'ready', what='ready')
        assert hv.domains[U1].identity_seen == []      # its identity is its seed's
    finally:
        a.stop()


# -- hot spares: paused in memory ------------------------------------------------------------
HOT = dataclasses.replace(TINY, size=1, hot=1)


def hot_agent(conf, hv, pool=HOT, **kw):
    hv.auto_ready = True
    return Agent(conf, hv, backend='file', pools={'tiny': pool}, warm=dict(WARM), **kw)


def test_a_hot_spare_is_paused_in_memory_with_its_memory_reserved(conf, hv):
    a = hot_agent(conf, hv)
    try:
        assert a.manager.warm.filler.next_spare() == (HOT, True)        # hot ones first
        spare = a.manager.warm.filler.make(HOT, hot=True)
        assert spare.hot and spare.image == '' and 'ca-' + spare.uuid in spare.xml
        assert hv.domains[spare.uuid].run_state == fakelibvirt.VIR_DOMAIN_PAUSED
        assert a.manager.resource_report()['reserved'] == {'vcpus': 0, 'memory_mb': 96,
                                                           'disk_gb': 1}
        assert a.manager.warm.filler.next_spare() == (HOT, False)       # then a saved one
        stats = a.manager.stats()['warm']
        assert stats['hot'] == {'tiny': 1} and stats['spares'] == {}
        assert a.manager.audits.audit() == []           # its memory is held: nothing to fix
    finally:
        a.stop()


def test_a_boot_takes_a_hot_spare_first_then_a_saved_one_then_boots_cold(conf, hv):
    a = hot_agent(conf, hv)
    try:
        hot = a.manager.warm.filler.make(HOT, hot=True)
        saved = a.manager.warm.filler.make(HOT)
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec(name='web-1'))['job_id'])
        assert job['result'] == 'hot: hit, spare %s of pool tiny' % hot.uuid
        # One call before ready (the resume); the instance's metadata and definition after.
        assert job['libvirt_calls_by_op'] == {'resume': 1, 'setMetadata': 1, 'defineXML': 1}
        inst = a.manager.instances[U1]
        wait_until(lambda: inst.readiness == 'ready', what='ready')
        dom = hv.domains[hot.uuid]
        assert dom.run_state == fakelibvirt.VIR_DOMAIN_RUNNING and not dom.transient
        assert json.loads(dom.identity_lines()[0])['uuid'] == U1
        meta = vconfig.parse_metadata(dom.xml)                 # the live definition's
        assert meta['uuid'] == U1 and meta['spare'] == hot.uuid and 'role' not in meta
        assert vconfig.parse_metadata(dom.next_xml)['uuid'] == U1  # and the persistent one
        assert os.path.exists(os.path.join(conf.instances_path, U1, 'disk.qcow2'))
        assert os.path.exists(a.driver._identity.path(U1))
        # In the spare's place, a link to the instance's directory: its QEMU's console log
        # rolls over by the spare's path (agent.instancedir).
        assert os.readlink(os.path.join(conf.instances_path, hot.uuid)) == U1
        report = a.manager.resource_report()
        assert report['reserved'] == {'vcpus': 0, 'memory_mb': 0, 'disk_gb': 1}   # the saved
        assert report['usage']['memory_mb'] == 96 + 0 and report['instances'] == 1
        second = a.wait_job(a.manager.requests.boot_instance(warm_spec(uuid=U2))['job_id'])
        assert second['result'] == 'warm: hit, spare %s of pool tiny' % saved.uuid
        third = a.wait_job(a.manager.requests.boot_instance(warm_spec(uuid=U3))['job_id'])
        assert third['result'] == 'warm: miss, pool empty'
        for uuid in (U1, U2, U3):
            assert a.wait_job(a.manager.requests.delete_instance(uuid)['job_id'])['state'] == 'done'
        assert hv.domains == {} and os.listdir(conf.instances_path) == []
    finally:
        a.stop()


def test_a_hot_spare_never_overcommits_the_nodes_memory(conf, hv):
    # 150 MiB of real memory for instances, 600 with the ratio: room for two tiny claims,
    # and for one hot spare's memory only.
    a = hot_agent(conf, hv, pool=dataclasses.replace(HOT, hot=2),
                  allocation=resources.Allocation(ram_ratio=4.0, reserved_memory_mb=32768 - 150))
    try:
        assert a.manager.warm.filler.make(HOT, hot=True) is not None
        assert a.manager.warm.filler.make(HOT, hot=True) is None       # refused, removed
        assert len(hv.domains) == 1 and a.manager.stats()['warm']['failures'] == 1
        assert a.manager.resource_report()['reserved']['memory_mb'] == 96
    finally:
        a.stop()


def test_a_hot_spare_survives_an_agent_restart_and_one_whose_domain_stopped_is_retired(conf, hv):
    a = hot_agent(conf, hv)
    spare = a.manager.warm.filler.make(HOT, hot=True)
    a.stop()
    b = hot_agent(conf, hv)
    try:
        assert [s.uuid for s in b.manager.warm.spares.available()] == [spare.uuid]
        assert b.manager.resource_report()['reserved']['memory_mb'] == 96
        assert b.manager.reconciled['spares_kept'] == 1
        hv.guest_poweroff(spare.uuid)           # killed behind the agent's back: retired
        wait_until(lambda: b.manager.stats()['warm']['retired'] == 1, what='retired')
        wait_until(lambda: b.manager.resource_report()['reserved']['memory_mb'] == 0,
                   what='released')
        assert b.manager.warm.spares.available() == []
        wait_until(lambda: os.listdir(conf.instances_path) == [], what='removed')
    finally:
        b.stop()


def test_a_hot_spare_taken_by_a_boot_the_agent_did_not_finish_is_removed_at_start_up(conf, hv):
    a = hot_agent(conf, hv)
    spare = a.manager.warm.filler.make(HOT, hot=True)
    hv.gates['resume'] = threading.Event()           # the agent dies before the resume
    a.manager.requests.boot_instance(warm_spec())
    wait_until(lambda: 'resume' in hv.calls, what='resume sent')
    a.crash()
    hv.gates.pop('resume').set()
    wait_until(lambda: hv.domains[spare.uuid].run_state == fakelibvirt.VIR_DOMAIN_RUNNING,
               what='resumed')
    b = hot_agent(conf, hv)
    try:
        # the spare's domain runs with the spare's metadata: a take that never finished; it
        # is removed, and the boot runs again (the pool has nothing left: cold)
        assert spare.uuid not in hv.domains
        wait_until(lambda: b.manager.instances[U1].vm_state == 'active', what='booted again')
        assert b.manager.warm.spares.available() == []
    finally:
        b.stop()


def test_a_hot_take_writes_nothing_durable_before_the_resume_and_records_it_before_its_metadata(
        conf, hv):
    """And it tells the guest who it is before the resume."""
    a = hot_agent(conf, hv)
    spare = a.manager.warm.filler.make(HOT, hot=True)
    record = os.path.join(conf.instances_path, spare.uuid, sparesmod.RECORD)
    restored_as = os.path.join(conf.instances_path, U1, vspares.RESTORED_AS)
    hv.gates['resume'] = threading.Event()
    a.manager.requests.boot_instance(warm_spec())
    wait_until(lambda: 'resume' in hv.calls, what='resume sent')
    # Before the resume: the spare is still recorded hot (a restart decides by its domain
    # and its disk), nothing says which domain the instance runs as; its identity is written
    # already (the guest reads it as it wakes).
    with open(record) as f:
        assert json.load(f)['state'] == 'hot'
    assert not os.path.exists(restored_as)
    assert json.loads(hv.domains[spare.uuid].identity_lines()[-1])['uuid'] == U1
    hv.gates['setMetadata'] = threading.Event()
    hv.gates.pop('resume').set()
    wait_until(lambda: 'setMetadata' in hv.calls, what='setMetadata sent')
    with open(restored_as) as f:           # recorded before the metadata names the instance
        assert f.read().strip() == spare.uuid
    hv.gates.pop('setMetadata').set()
    try:
        wait_until(lambda: 'defineXML' in hv.calls, what='persistent')
        assert a.manager.instances[U1].readiness == 'ready'
    finally:
        a.stop()
    b = hot_agent(conf, hv)        # recognised by its metadata and that record
    try:
        assert b.manager.instances[U1].vm_state == 'active'
        assert list(hv.domains) == [spare.uuid]
    finally:
        b.stop()


def test_a_hot_take_killed_before_its_resume_leaves_no_spare_and_boots_again(conf, hv):
    a = hot_agent(conf, hv)
    spare = a.manager.warm.filler.make(HOT, hot=True)
    hv.gates['resume'] = threading.Event()
    a.manager.requests.boot_instance(warm_spec())
    wait_until(lambda: 'resume' in hv.calls, what='resume sent')
    a.crash()
    hv.fail_next['resume'] = fakelibvirt.libvirtError('the agent that sent it is gone')
    hv.gates.pop('resume').set()                 # the resume never happened: still paused
    b = hot_agent(conf, hv)
    try:
        # its disk is the instance's already: not a spare any more, its domain removed
        assert spare.uuid not in hv.domains
        wait_until(lambda: b.manager.instances[U1].vm_state == 'active', what='booted again')
        assert b.manager.warm.spares.available() == []
        assert sorted(os.listdir(conf.instances_path)) == [U1]
    finally:
        b.stop()


def test_a_resume_libvirt_refuses_removes_the_hot_spare_and_boots_cold(conf, hv):
    a = hot_agent(conf, hv)
    try:
        spare = a.manager.warm.filler.make(HOT, hot=True)
        hv.fail_next['resume'] = fakelibvirt.libvirtError('internal error: resume failed')
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['state'] == 'done'
        assert job['result'] == ('cold (hot: resume failed: libvirt resume failed: internal '
                                 'error: resume failed)')
        assert spare.uuid not in hv.domains and U1 in hv.domains
        assert a.manager.resource_report()['reserved']['memory_mb'] == 0
        assert sorted(os.listdir(conf.instances_path)) == [U1]
    finally:
        a.stop()


def test_a_resumed_instance_whose_domain_goes_before_persist_leaves_nothing_of_it(conf, hv):
    """Its live metadata (kept from the resume until persist) goes with its domain's state
    when the instance is deleted, even though persist never set it."""
    a = hot_agent(conf, hv)
    try:
        spare = a.manager.warm.filler.make(HOT, hot=True)
        hv.gates['setMetadata'] = threading.Event()
        job_id = a.manager.requests.boot_instance(warm_spec())['job_id']
        wait_until(lambda: 'setMetadata' in hv.calls, what='persist begun')
        domains = a.driver._domains
        assert domains.live_metadata(U1)[1] == spare.uuid
        hv.guest_poweroff(spare.uuid)           # a transient domain: gone as it stops
        hv.gates.pop('setMetadata').set()       # so persist fails: "Domain not found"
        a.wait_job(job_id)
        assert domains.live_metadata(U1) is not None
        assert a.wait_job(a.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
        assert domains.live_metadata(U1) is None and domains.take_restored(U1) is None
        assert hv.domains == {} and os.listdir(conf.instances_path) == []
    finally:
        a.stop()


def test_a_hot_take_is_two_work_queue_calls_up_to_its_resume(conf, hv):
    """The disk's hand-over (what tells a restart the spare is used up), then ONE call that
    writes the identity, resumes and renames the console and port: every hop to the work
    queue waits for the event loop, which serves the other boots of a storm meanwhile."""
    a = hot_agent(conf, hv)
    try:
        spare = a.manager.warm.filler.make(HOT, hot=True)
        ops = []
        a.runtime.workqueue.observers.append(
            lambda op, *times: ops.append(op) if context.current().uuid == U1 else None)
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['result'] == 'hot: hit, spare %s of pool tiny' % spare.uuid
        assert ops[:ops.index('libvirt.resume') + 1] == ['disk.adopt', 'libvirt.resume'], ops
        assert os.path.exists(a.driver._identity.path(U1))            # renamed in it
        assert not os.path.exists(a.driver._identity.path(spare.uuid))
    finally:
        a.stop()


def test_a_hot_take_whose_identity_cannot_be_written_removes_the_spare_and_boots_cold(conf, hv):
    a = hot_agent(conf, hv)
    try:
        spare = a.manager.warm.filler.make(HOT, hot=True)
        port = a.driver._identity.path(spare.uuid)
        a.driver._identity.close(spare.uuid)             # its connection gone,
        os.unlink(port)                                  # and its port: a file nothing
        open(port, 'w').close()                          # listens on (connect refused)
        job = a.wait_job(a.manager.requests.boot_instance(warm_spec())['job_id'])
        assert job['state'] == 'done' and job['result'].startswith(
            'cold (hot: resume failed: identity port of %s: ' % U1), job
        assert spare.uuid not in hv.domains and U1 in hv.domains
        assert 'resume' not in hv.calls                  # never woken as somebody else
        assert 'resume' not in job['libvirt_calls_by_op']         # nor counted as if it were
        assert a.driver.host.calls['resume'] == 0
        assert a.manager.resource_report()['reserved']['memory_mb'] == 0
        assert sorted(os.listdir(conf.instances_path)) == [U1]
        # Nothing of the spare's port is left: it went with the instance's first domain.
        assert sorted(os.listdir(conf.libvirt.identity_socket_dir)) == [U1 + '.sock']
    finally:
        a.stop()
