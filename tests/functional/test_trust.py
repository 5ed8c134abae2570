"""Trust on the real node: guests reach no host service, the broker knows its clients, the
agent touches only what it made, the conductor survives bad reports, storage work is bounded.

Each test reproduces one of the holes found on the earlier code (issue 11) and shows it closed.
"""
import concurrent.futures
import grp
import json
import os
import pwd
import socket
import ssl
import subprocess
import sys
import time
import uuid as uuidlib

import libvirt
import pytest

from agent import exception
from agent.conductor import api as conductor_api
from agent.virt.libvirt import config as vconfig
from tests.functional import conftest

PROBE_DONE = 'guest-probe: done'


def _probe_results(console: str) -> dict:
    out = {}
    for line in console.splitlines():
        if line.startswith('guest-probe: 10.0.2.2:'):
            port, state = line.split(':', 2)[2].split()
            out[int(port)] = state
    return out


def _probe_ports(node) -> list[int]:
    return [conftest.AMQPS_PORT, 5672, node.metrics_port]


def _raw_probe_guest(node, uuid: str, ports: list[int]) -> str:
    """The floor of the old code: the same probe guest with libvirt's own user NIC (no
    isolation), defined straight in libvirt; returns its console once the probe is done."""
    log = os.path.join(node.workdir, 'control-%s.log' % uuid[:8])
    xml = vconfig.GuestConfig(
        uuid=uuid, name='control', virt_type=conftest.VIRT_TYPE, arch='x86_64', vcpus=1,
        memory_mb=128, console_log=log, tcg_tb_cache_mb=16,
        kernel=os.path.join(node.image_dir, 'test-vmlinuz'),
        initrd=os.path.join(node.image_dir, 'test-initrd.img'),
        cmdline='console=ttyS0 quiet no_timer_check ca.probe=%s' % ','.join(map(str, ports)),
    ).to_xml().replace('</devices>', "<interface type='user'><model type='virtio'/>"
                                     "</interface></devices>")
    xml = xml.replace('<name>ca-', '<name>control-')    # not an agent domain
    conn = libvirt.open(conftest.URI)
    dom = conn.defineXML(xml)
    try:
        dom.createWithFlags(0)
        deadline = time.monotonic() + 120
        while True:
            text = open(log, errors='replace').read() if os.path.exists(log) else ''
            if PROBE_DONE in text or time.monotonic() > deadline:
                return text
            time.sleep(0.5)
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()


# -- hole 1: a guest could command every agent ---------------------------------------------------
def test_a_guest_reaches_no_host_service(node):
    ports = _probe_ports(node)
    spec = node.spec(nics=[{'type': 'user'}],
                     cmdline='console=ttyS0 quiet no_timer_check ca.probe=%s'
                     % ','.join(map(str, ports)))
    node.boot(spec)
    node.wait_states([spec['uuid']], ['active'])
    console = node.wait_console(spec['uuid'], PROBE_DONE, timeout=150)
    assert 'guest-nic: eth0' in console, console      # its NIC is there and up
    seen = _probe_results(console)
    assert seen == {p: 'closed' for p in ports}, console
    node.delete([spec['uuid']])
    # Control: the same probe through libvirt's plain user NIC (what the agent used to make)
    # reaches the broker's TLS port and the metrics port on the host's loopback.
    control = _probe_results(_raw_probe_guest(node, str(uuidlib.uuid4()), ports))
    assert control[conftest.AMQPS_PORT] == 'open' and control[node.metrics_port] == 'open', \
        control


def test_the_broker_knows_its_clients():
    # No guest account, no plain AMQP listener: TLS with a password per role.
    res = subprocess.run(['rabbitmqctl', 'authenticate_user', 'guest', 'guest'],
                         capture_output=True)
    assert res.returncode != 0
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', 5672), timeout=2).close()
    for creds in (conftest.AGENT_CREDS, conftest.CONTROL_CREDS):
        assert os.stat(creds).st_mode & 0o077 == 0, '%s is readable by others' % creds
        with open(creds) as f:
            text = f.read()
        assert 'rabbit://' in text and ':%d/' % conftest.AMQPS_PORT in text
        assert 'ssl = true' in text and 'guest' not in text
        assert 'ssl_ca_file = %s' % CA_FILE in text


CA_FILE = '/etc/compute-agent/tls/ca.pem'


def test_files_holding_secrets_are_roots_alone():
    etc = '/etc/compute-agent'
    secrets = [os.path.join(etc, n) for n in os.listdir(etc)
               if n.startswith('messaging-') or n == 'conductor-db.url']
    keys = os.path.join(etc, 'node-keys')
    secrets += [os.path.join(keys, n) for n in os.listdir(keys)]
    assert len(secrets) >= 4, secrets
    for path in secrets + [keys, os.path.join(etc, 'tls', 'ca.key')]:
        st = os.stat(path)
        assert st.st_uid == 0 and st.st_mode & 0o077 == 0, '%s: %o' % (path, st.st_mode)


def test_the_erlang_ports_listen_on_loopback_only():
    """epmd (4369) and the Erlang distribution (25672) let whoever has the cookie run code in
    the broker: reachable from this host only."""
    out = subprocess.run(['ss', '-ltnH'], capture_output=True, text=True, check=True).stdout
    listening = [line.split()[3] for line in out.splitlines()
                 if line.split()[3].rsplit(':', 1)[1] in ('4369', '25672')]
    assert {a.rsplit(':', 1)[1] for a in listening} == {'4369', '25672'}, listening
    assert all(a.startswith(('127.0.0.1:', '[::1]:')) for a in listening), listening


def _tls_handshake(cafile: str, hostname: str = 'localhost') -> None:
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(('127.0.0.1', conftest.AMQPS_PORT), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=hostname):
            pass


def test_the_broker_proves_itself_with_the_nodes_ca(tmp_path):
    # What oslo.messaging does with ssl_ca_file (CERT_REQUIRED, the URL's host name checked):
    # the node's CA and name pass; another CA, or a name the certificate does not carry, fail.
    _tls_handshake(CA_FILE, 'localhost')
    _tls_handshake(CA_FILE, '127.0.0.1')
    other = tmp_path / 'other-ca.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                    '-subj', '/CN=not-the-node-ca', '-keyout', str(tmp_path / 'k.pem'),
                    '-out', str(other)], check=True, capture_output=True)
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(str(other))
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_handshake(CA_FILE, 'broker.example.org')


# A node's credentials reach only its own queues and the report topic: test_rogue_node.py.


CONSOLE_MAX = 1024 * 1024      # virtlogd's max_size and max_backups (tools/setup-node.sh)
CONSOLE_BACKUPS = 2


def test_a_flooding_guest_leaves_its_console_log_under_the_cap(node):
    spec = node.spec(cmdline='console=ttyS0 quiet no_timer_check ca.flood=4')
    node.boot(spec)
    node.wait_console(spec['uuid'], 'guest-flood: done', timeout=600)
    directory = os.path.join(node.instances, spec['uuid'])
    sizes = {n: os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)
             if n.startswith('console.log')}
    # 4 MiB written: rolled over, the newest file and the kept ones within the cap.
    assert len(sizes) == 1 + CONSOLE_BACKUPS, sizes
    assert all(size <= CONSOLE_MAX for size in sizes.values()), sizes
    assert sum(sizes.values()) <= (1 + CONSOLE_BACKUPS) * CONSOLE_MAX
    assert 'guest-flood: done' in node.compute.get_console_output(
        node.host, spec['uuid'], 4096)['output']
    node.delete([spec['uuid']])
    assert not os.path.exists(directory)


# -- hole 2: delete destroyed domains the agent does not own --------------------------------------
def test_a_foreign_domain_is_never_taken_or_touched(node):
    uuid = str(uuidlib.uuid4())
    xml = ("<domain type='%s'><name>other-tool-%s</name><uuid>%s</uuid><memory unit='MiB'>64"
           "</memory><os><type>hvm</type></os></domain>" % (conftest.VIRT_TYPE, uuid[:8], uuid))
    conn = libvirt.open(conftest.URI)
    conn.defineXML(xml)
    try:
        time.sleep(0.5)                       # its DEFINED event reaches the agent
        with pytest.raises(exception.InvalidSpec, match='taken by a domain this agent does '
                                                        'not own'):
            node.compute.boot_instance(node.host, node.spec(uuid=uuid))
        answer = node.compute.delete_instance(node.host, uuid)
        assert answer['job_id'] is None
        assert conn.lookupByUUIDString(uuid).name() == 'other-tool-%s' % uuid[:8]
        with pytest.raises(exception.InstanceNotFound):
            node.compute.get_instance(node.host, uuid)
    finally:
        conn.lookupByUUIDString(uuid).undefine()
        conn.close()


# -- hole 3: a stale delete destroyed a newer instance --------------------------------------------
def test_a_stale_delete_cannot_destroy_a_newer_instance(node):
    spec = node.spec()
    uuid = spec['uuid']
    node.boot(spec)
    first = node.compute.delete_instance(node.host, uuid)
    second = node.compute.delete_instance(node.host, uuid)
    assert second['job_id'] == first['job_id']
    assert node.wait_job(first['job_id'])['state'] == 'done'
    node.wait_states([uuid], ['deleted'])
    again = node.boot(spec)
    assert node.wait_job(again['job_id'])['state'] == 'done'
    node.wait_states([uuid], ['active'])
    time.sleep(1.0)                           # a stale delete would act now
    assert node.domains(running=True) == {uuid}
    assert node.compute.get_instance(node.host, uuid)['vm_state'] == 'active'
    node.delete([uuid])


# -- hole 4: one bad report wedged the conductor; any node overwrote any other's records -----------
def test_bad_and_foreign_reports_change_nothing_and_the_conductor_goes_on(node):
    # Signed with the node's own key: what the node itself could send.
    own = conductor_api.ReportAPI(node.transport, node.topic, node.report_key(), timeout=10)
    spec = node.spec()
    node.boot(spec)
    row = node.wait_states([spec['uuid']], ['active'])[spec['uuid']]
    for bad in ([{'uuid': spec['uuid'], 'seq': 1}],                           # no vm_state
                [dict(row, seq=2 ** 62, vm_state='deleted')]):                # far future
        with pytest.raises(exception.InvalidReport):
            own.report(node.host, bad, None)
    # In another node's name (that node's key unknown): refused whole.
    with pytest.raises(exception.InvalidReport, match='not signed'):
        own.report('evil-node', [dict(row, host='evil-node', seq=row['seq'] + 1,
                                      vm_state='deleted')], None)
    assert node.conductor.get_instance(spec['uuid'])['host'] == node.host
    # The conductor is not wedged: the node's own next reports apply.
    node.delete([spec['uuid']])


# -- hole 7: bounded work -----------------------------------------------------------------------
def test_write_trace_from_many_callers_at_once(node):
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: node.compute.write_trace(node.host), range(6)))
    assert all(a['path'] == node.trace_path for a in answers)
    with open(node.trace_path) as f:
        assert json.load(f)['traceEvents']
    assert not [n for n in os.listdir(node.workdir) if '.tmp.' in n]


def _worker(tmp_path, timeout: float):
    """A real command worker whose PATH has an lvcreate that hangs."""
    bindir = tmp_path / 'bin'
    bindir.mkdir()
    (bindir / 'lvcreate').write_text('#!/bin/sh\nsleep 60\n')
    (bindir / 'lvcreate').chmod(0o755)
    env = dict(os.environ, PATH='%s:%s' % (bindir, os.environ['PATH']))
    return subprocess.Popen([sys.executable, '-m', 'agent.storage.cmdworker', '--volume-group',
                             'vg0', '--timeout', str(timeout)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


LV_CREATE = json.dumps({'op': 'lv_create', 'args': {'vg': 'vg0', 'uuid': str(uuidlib.uuid4()),
                                                    'size': 1 << 20}}) + '\n'


def test_a_hung_storage_command_is_killed_at_its_timeout(tmp_path):
    worker = _worker(tmp_path, timeout=1)
    try:
        start = time.monotonic()
        worker.stdin.write(LV_CREATE.encode())
        worker.stdin.flush()
        answer = json.loads(worker.stdout.readline())
        assert answer['rc'] == 124 and 'lvcreate timed out after 1 s' in answer['stderr']
        assert time.monotonic() - start < 30
        worker.stdin.write(b'{"op": "sh", "args": {"c": "id"}}\n')   # not an operation
        worker.stdin.flush()
        assert 'refused: unknown operation' in json.loads(worker.stdout.readline())['stderr']
    finally:
        worker.kill()
        worker.wait()


def test_the_command_worker_exits_quietly_when_the_agent_is_gone(tmp_path):
    worker = _worker(tmp_path, timeout=3)
    worker.stdin.write(LV_CREATE.encode() * 3)   # one running, two pending
    worker.stdin.flush()
    worker.stdin.close()
    worker.stdout.close()                        # the agent died: nobody reads the answers
    assert worker.wait(30) == 0
    assert worker.stderr.read() == b''


def test_only_root_reaches_libvirtds_read_write_socket():
    # Whoever opens it commands every domain of the node: its file mode keeps it root's.
    st = os.stat('/run/libvirt/libvirt-sock')
    assert st.st_uid == 0 and st.st_mode & 0o077 == 0, oct(st.st_mode)


# -- QEMU as root, unconfined ---------------------------------------------------------------------
def _qemu_of(uuid: str) -> int:
    """The pid of the QEMU process running domain ``uuid`` (its command line names it)."""
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if b'-uuid' in argv and argv[argv.index(b'-uuid') + 1] == uuid.encode():
            return int(pid)
    raise AssertionError('no QEMU process for %s' % uuid)


def _ids(pid: int) -> tuple[set[int], set[int], set[int]]:
    """(uids, gids, supplementary groups) of process ``pid``."""
    fields = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            key, _, value = line.partition(':')
            if key in ('Uid', 'Gid', 'Groups'):
                fields[key] = {int(v) for v in value.split()}
    return fields['Uid'], fields['Gid'], fields['Groups']


def test_qemu_runs_as_libvirt_qemu_with_kvm_and_only_its_own_files(node):
    qemu_uid, qemu_gid = pwd.getpwnam('libvirt-qemu').pw_uid, grp.getgrnam('libvirt-qemu').gr_gid
    kvm_gid = grp.getgrnam('kvm').gr_gid
    st = os.stat('/dev/kvm')
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, kvm_gid, 0o660)  # as udev makes it
    spec = node.spec(disk_gb=1, image='test-disk.raw')
    node.boot(spec)
    node.wait_states([spec['uuid']], ['active'])
    uids, gids, groups = _ids(_qemu_of(spec['uuid']))
    assert uids == {qemu_uid} and gids == {qemu_gid}, (uids, gids)   # real, effective, saved, fs
    assert kvm_gid in groups and 0 not in groups
    # The instance directory: root's, QEMU's group may enter (not list), nobody else.
    directory = os.path.join(node.instances, spec['uuid'])
    st = os.stat(directory)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, qemu_gid, 0o710)
    # Its disk: QEMU's while the domain runs (libvirt's dynamic ownership), nobody else's.
    disk = os.stat(os.path.join(directory, 'disk.qcow2'))
    assert (disk.st_uid, disk.st_mode & 0o077) == (qemu_uid, 0)
    # The shared image under the overlay stays root's: QEMU may read it, never write it.
    image = os.path.join(node.image_dir, 'test-disk.raw')
    assert (os.stat(image).st_uid, os.stat(image).st_mode & 0o022) == (0, 0)
    # The same image as a transient disk, while it is another's backing file: shared,
    # read-only, still root's.
    transient = node.spec(image='test-disk.raw')
    node.boot(transient)
    node.wait_states([transient['uuid']], ['active'])
    assert os.stat(image).st_uid == 0
    # The kernel is QEMU's while a domain runs (libvirt chowns it, with no way to opt out);
    # libvirt gives it back to root when the last domain using it is gone.
    kernel = os.path.join(node.image_dir, 'test-vmlinuz')
    assert os.stat(kernel).st_uid == qemu_uid
    node.delete([spec['uuid'], transient['uuid']])
    assert not os.path.exists(directory)
    assert os.stat(image).st_uid == 0 and os.stat(kernel).st_uid == 0
