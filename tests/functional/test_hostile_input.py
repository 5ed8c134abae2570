"""1,000+ malformed or hostile RPC payloads against the running agent (hypothesis).

Every payload is invalid by construction: one of its parts is of the wrong type, missing,
unknown, out of range, or a string no field accepts (unicode, control characters, XML and
shell metacharacters where the field's alphabet excludes them, path traversal in file
names). Each must get a clear error naming what is wrong; afterwards the agent still answers,
and no job, instance, domain, directory or disk was created.
"""
import os
import time
import uuid as uuidlib

import libvirt
from hypothesis import HealthCheck, given, settings, strategies as st

from agent import exception
from agent.conductor import api as conductor_api
from tests.functional import conftest

EXAMPLES = 1000

HOSTILE = st.sampled_from([
    '../../etc/passwd', '/etc/shadow', '..', '.', '', ' ', 'a/../../b', 'test-vmlinuz/..',
    '$(reboot)', '`id`', 'x; rm -rf /', 'a|b', '<domain/>', ']]><!--', '&amp;', "'\"",
    'ünïcødé', '名前', '\u202e\u0000', 'x\ny', '\x7f', '%s%n', 'a' * 5000, 'nul\0byte',
]) | st.text(min_size=1, max_size=40).filter(lambda s: not s.isascii() or not s.isprintable())

FILE_FIELDS = ('kernel', 'initrd', 'image')
WRONG_TYPES = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True),
                        st.lists(st.integers(), min_size=1, max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def _valid_spec():
    return {'uuid': str(uuidlib.uuid4()), 'name': 'ok', 'vcpus': 1, 'memory_mb': 64,
            'kernel': 'test-vmlinuz', 'initrd': 'test-initrd.img', 'cmdline': 'console=ttyS0',
            'nics': [{'type': 'user'}], 'disk_gb': 0}


@st.composite
def bad_boot(draw):
    spec = _valid_spec()
    how = draw(st.sampled_from(['type', 'missing', 'extra', 'huge', 'string', 'nic', 'spec']))
    if how == 'type':
        field = draw(st.sampled_from(sorted(spec)))
        spec[field] = draw(WRONG_TYPES.filter(lambda v: v is not None or field not in (
            'name', 'cmdline', 'initrd', 'nics', 'disk_gb', 'vcpus', 'memory_mb')))
    elif how == 'missing':
        if draw(st.booleans()):
            del spec['uuid']
        else:
            del spec['kernel'], spec['initrd']
    elif how == 'extra':
        spec[draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in spec))] = \
            draw(st.integers() | HOSTILE)
    elif how == 'huge':
        field = draw(st.sampled_from(['vcpus', 'memory_mb', 'disk_gb']))
        spec[field] = draw(st.integers(min_value=2 ** 31) | st.integers(max_value=-1))
    elif how == 'string':
        field = draw(st.sampled_from(['uuid', 'name', 'cmdline'] + list(FILE_FIELDS)))
        value = draw(HOSTILE)
        if field == 'cmdline':       # printable ASCII is allowed there: make it not so
            value = value if not (value.isascii() and value.isprintable()) else value + '\x00'
        spec[field] = value
    elif how == 'nic':
        spec['nics'] = [draw(st.sampled_from([
            {'type': 'bridge', 'bridge': draw(HOSTILE)},
            {'type': draw(HOSTILE)},
            {'type': 'user', 'mac': draw(HOSTILE)},
            {'type': 'user', 'extra': 1},
            {'type': 'bridge'},
        ]))]
    else:
        return draw(WRONG_TYPES | HOSTILE)
    return spec


@st.composite
def bad_call(draw):
    method = draw(st.sampled_from(['boot_instance', 'boot_instance', 'boot_instance',
                                   'delete_instance', 'get_job', 'get_instance', 'get_storage',
                                   'ping']))
    if method == 'boot_instance':
        return method, {'spec': draw(bad_boot())}
    if method == 'ping':
        return method, {draw(st.text(min_size=1, max_size=10)): draw(st.integers())}
    arg = {'delete_instance': 'uuid', 'get_instance': 'uuid', 'get_job': 'job_id',
           'get_storage': 'uuids'}[method]
    value = draw(HOSTILE | WRONG_TYPES.filter(lambda v: v is not None or arg != 'uuids'))
    return method, {arg: value}


def _footprint(node):
    stats = node.compute.get_stats(node.host)
    domains = len(node.host_domains())      # this node's: other test runs share libvirtd
    return (stats['manager']['jobs_total'], stats['manager']['instances'], domains,
            sorted(os.listdir(node.instances)), node.compute.get_storage(node.host)['disks'])


def test_a_thousand_hostile_payloads_get_clear_errors_and_create_nothing(node):
    before = _footprint(node)
    invalid_before = node.compute.get_stats(node.host)['invalid_requests']
    client = node.compute._client_for(node.host).prepare(server=node.host, version='1.3')
    seen = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(bad_call())
    def one(call):
        method, args = call
        try:
            client.call({}, method, **args)
        except exception.InvalidSpec as exc:
            message = exc.args[0]
            assert message.startswith('Invalid request: ') and len(message) < 600, message
            seen.append(method)
            return
        raise AssertionError('accepted: %s(%r)' % (method, args))

    one()
    assert len(seen) >= EXAMPLES
    assert node.compute.ping(node.host) == 'pong'
    assert node.compute.get_stats(node.host)['invalid_requests'] - invalid_before >= EXAMPLES
    assert _footprint(node) == before


def test_hostile_valid_requests_touch_nothing_they_do_not_own(node):
    """Requests that pass every schema check but come from someone hostile: a uuid another
    tool's domain holds, stale and repeated deletes, and (with a node's own credentials)
    reports with a huge seq or in another node's name."""
    conn = libvirt.open(conftest.URI)
    foreign = str(uuidlib.uuid4())
    conn.defineXML("<domain type='%s'><name>tenant-tool-%s</name><uuid>%s</uuid>"
                   "<memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"
                   % (conftest.VIRT_TYPE, foreign[:8], foreign))
    try:
        time.sleep(0.5)                          # the agent hears of it by its event
        for _ in range(3):
            try:
                node.compute.boot_instance(node.host, node.spec(uuid=foreign))
                raise AssertionError('a foreign uuid was accepted')
            except exception.UuidTaken:
                pass
            assert node.compute.delete_instance(node.host, foreign)['job_id'] is None
        assert conn.lookupByUUIDString(foreign).name() == 'tenant-tool-%s' % foreign[:8]

        spec = node.spec()
        node.boot(spec)
        deletes = {node.compute.delete_instance(node.host, spec['uuid'])['job_id']
                   for _ in range(5)}
        assert len(deletes) == 1                 # one delete, however often it is asked
        node.wait_states([spec['uuid']], ['deleted'])
        node.boot(spec)                          # the same uuid again: a new instance
        row = node.wait_states([spec['uuid']], ['active'])[spec['uuid']]

        # Signed with the node's own key: what the node itself could send.
        rogue = conductor_api.ReportAPI(node.transport, node.topic, node.report_key(),
                                        timeout=10)
        for state in (dict(row, seq=2 ** 63 - 1, vm_state='deleted'),
                      dict(row, seq=10 ** 30)):
            try:
                rogue.report(node.host, [state], None)
                raise AssertionError('a report from the far future was accepted')
            except exception.InvalidReport:
                pass
        try:
            rogue.report('other-node', [dict(row, host='other-node', seq=row['seq'] + 1,
                                             vm_state='error')], None)
            raise AssertionError('a report in another node\'s name was accepted')
        except exception.InvalidReport:
            pass
        try:
            rogue.report(node.host, [], {'generation': 2 ** 62, 'capacity': {}, 'usage': {}})
            raise AssertionError('a usage generation from the far future was accepted')
        except exception.InvalidReport:
            pass
        time.sleep(1.0)
        assert node.domains(running=True) == {spec['uuid']}
        held = node.conductor.get_instance(spec['uuid'])
        assert (held['host'], held['vm_state']) == (node.host, 'active')
        node.delete([spec['uuid']])
    finally:
        conn.lookupByUUIDString(foreign).undefine()
        conn.close()
