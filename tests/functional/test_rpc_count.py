"""Libvirt RPCs per operation as libvirt itself counts them: the agent's libvirt client logs
every remote call it sends (``LIBVIRT_LOG_FILTERS=1:rpc``: one ``RPC_CLIENT_MSG_TX_QUEUE`` line
with ``type=0`` per call of the remote program), and the test reads that log around each
operation. Python calls are not RPCs: ``dom.create()`` costs two (platform facts)."""
import os
import re
import time

import pytest

from tests.functional import conftest

REMOTE_PROGRAM = 0x20008086
# remote_protocol.x procedure numbers
PROCS = {11: 'DomainDefineXML', 196: 'DomainCreateWithFlags', 12: 'DomainDestroy',
         35: 'DomainUndefine', 258: 'DomainShutdownFlags', 245: 'DomainReset', 27: 'DomainReboot',
         9: 'DomainCreate', 24: 'DomainLookupByUUID', 14: 'DomainGetXMLDesc'}
CALL = re.compile(r'RPC_CLIENT_MSG_TX_QUEUE: .* prog=%d vers=\d+ proc=(\d+) type=0 '
                  % REMOTE_PROGRAM)


@pytest.fixture(scope='module')
def rpc_node(tmp_path_factory):
    conftest._check_node()
    workdir = str(tmp_path_factory.mktemp('rpcnode'))
    log = os.path.join(workdir, 'libvirt-client.log')
    node = conftest.Node(workdir, extra_config='[resources]\naudit_interval = 0\n',
                         agent_env={'LIBVIRT_LOG_FILTERS': '1:rpc 4:*',
                                    'LIBVIRT_LOG_OUTPUTS': '1:file:%s' % log})
    node.client_log = log
    yield from conftest._run_node(node)


def _sent(node, since: int) -> tuple[list[str], int]:
    """The remote calls the agent sent after byte ``since`` of its client log, and the end."""
    with open(node.client_log, 'rb') as f:
        f.seek(since)
        text = f.read().decode('utf-8', 'replace')
    calls = [PROCS.get(int(p), 'proc %s' % p) for p in CALL.findall(text)]
    return calls, since + len(text.encode('utf-8', 'replace'))


def _after(node, mark: int) -> tuple[list[str], int]:
    """The remote calls sent after ``mark``, once the log stopped growing for 0.5 s (whatever
    an operation's events lead to is in)."""
    size = -1
    while size != os.path.getsize(node.client_log):
        size = os.path.getsize(node.client_log)
        time.sleep(0.5)
    return _sent(node, mark)


def test_each_operation_costs_the_documented_rpcs_as_libvirt_counts_them(rpc_node):
    node = rpc_node
    spec = node.spec()
    uuid = spec['uuid']
    _, mark = _after(node, 0)
    node.boot(spec)
    node.wait_states([uuid], ['active'])
    node.wait_console(uuid, conftest.MARKER)
    calls, mark = _after(node, mark)
    assert calls == ['DomainDefineXML', 'DomainCreateWithFlags'], calls
    job = node.wait_job(node.compute.stop_instance(node.host, uuid, timeout=0)['job_id'])
    assert job['state'] == 'done'
    calls, mark = _after(node, mark)
    assert calls == ['DomainDestroy'], calls
    node.wait_job(node.compute.start_instance(node.host, uuid)['job_id'])
    calls, mark = _after(node, mark)
    assert calls == ['DomainCreateWithFlags'], calls
    node.wait_console(uuid, conftest.MARKER)
    node.wait_job(node.compute.reboot_instance(node.host, uuid, hard=True)['job_id'])
    calls, mark = _after(node, mark)
    assert calls == ['DomainReset'], calls
    node.delete([uuid])
    calls, mark = _after(node, mark)
    assert calls == ['DomainDestroy', 'DomainUndefine'], calls
