"""The conductor's store and the RPC error contract."""
import threading

import oslo_messaging
import pytest
from oslo_messaging._drivers import common as rpc_common

from agent import exception
from agent import rpc
from agent.conductor import db
from agent.conductor import manager


def row(uuid, seq, vm_state):
    return {'uuid': uuid, 'seq': seq, 'vm_state': vm_state, 'name': 'n', 'accepted_at': 1.0}


def test_only_newer_reports_apply(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    assert store.apply_report('h1', [row('a', 5, 'active')]) == 1
    assert store.apply_report('h1', [row('a', 3, 'building')]) == 0   # late, older
    assert store.get('a')['vm_state'] == 'active'
    assert store.apply_report('h1', [row('a', 6, 'deleted'), row('b', 1, 'building')]) == 2
    assert store.get('a')['vm_state'] == 'deleted'
    assert [r['uuid'] for r in store.list_instances('h1')] == ['a', 'b']
    assert store.list_instances('other') == []
    assert store.report_count('h1') == 3


def test_wait_for_returns_when_the_state_arrives(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    store.apply_report('h1', [row('a', 1, 'building')])
    threading.Timer(0.05, store.apply_report, ('h1', [row('a', 2, 'active')])).start()
    rows = store.wait_for(['a'], ['active'], timeout=10)
    assert rows['a']['vm_state'] == 'active'
    assert store.wait_for(['zzz'], ['active'], timeout=0.01) == {'zzz': None}


def test_agent_errors_cross_rpc_as_the_same_class_and_message():
    err = exception.InvalidSpec(reason='memory_mb: must be between 16 and 1048576, got -1')
    data = rpc_common.serialize_remote_exception((type(err), err, None))
    back = rpc_common.deserialize_remote_exception(data, rpc.EXMODS)
    assert isinstance(back, exception.InvalidSpec)
    assert back.args[0] == str(err)


# -- trust: a conductor that bad input cannot break --------------------------------------------
NOW_NS = 1_800_000_000 * 10 ** 9
UA = '11111111-2222-3333-4444-555555555555'
UB = '22222222-2222-3333-4444-555555555555'


def good(uuid=UA, seq=NOW_NS - 10, vm_state='active', **extra):
    return dict({'uuid': uuid, 'seq': seq, 'vm_state': vm_state, 'name': 'n',
                 'power_state': 'running', 'accepted_at': 1.0}, **extra)


def usage(generation=NOW_NS - 5, **extra):
    return dict({'generation': generation, 'capacity': {'vcpus': 32, 'memory_mb': 1000,
                                                        'disk_gb': 10},
                 'usage': {'vcpus': 1, 'memory_mb': 128, 'disk_gb': 0}, 'instances': 1,
                 'inventory': {'cpus': 2, 'memory_mb': 1512, 'disk_gb': 10}, 'at': 1.0}, **extra)


class Endpoint:
    """The conductor's endpoint called as oslo.messaging's dispatcher calls it: an error it
    expects comes out as the agent's own exception (what the RPC caller gets)."""

    def __init__(self, store):
        self._store = store
        self._ep = manager.ConductorEndpoint(store, max_future_s=3600, clock_ns=lambda: NOW_NS)

    def __getattr__(self, name):
        method = getattr(self._ep, name)

        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except oslo_messaging.ExpectedException as exc:
                raise exc.exc_info[1] from None
        return call


@pytest.fixture
def endpoint(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    yield Endpoint(store)
    store.close()


@pytest.mark.parametrize('states, resources, why', [
    ([{'uuid': UA, 'seq': 1}], None, 'vm_state'),                       # wedged SQLite before
    ([good(vm_state='pwned')], None, 'vm_state'),
    ([good(seq=NOW_NS + 7200 * 10 ** 9)], None, 'seq'),                 # froze a row for ever
    ([good(seq=2 ** 70)], None, 'seq'),
    ([good(seq='1')], None, 'seq'),
    ([good(seq=True)], None, 'seq'),
    ([good(uuid='../etc')], None, 'uuid'),
    ([good(fault='x' * 100000)], None, 'fault'),
    ([good(host='other-node')], None, 'host'),
    ('not a list', None, 'states'),
    ([good()] * 10001, None, 'states'),
    ([good()], usage(generation=2 ** 80), 'generation'),
    ([good()], usage(usage={'vcpus': -1}), 'usage.vcpus'),
    ([good()], usage(capacity='lots'), 'capacity'),
    ([good()], usage(generation=float('nan')), 'generation'),
])
def test_a_bad_report_is_refused_whole_and_the_next_good_one_applies(endpoint, states,
                                                                     resources, why):
    with pytest.raises(exception.InvalidReport, match=why):
        endpoint.report({}, 'h1', states, resources)
    store = endpoint._store
    assert store.get(UA) is None and store.get_node('h1') is None
    assert store.report_count() == 0
    # Not wedged: the transaction was never left open.
    assert endpoint.report({}, 'h1', [good()], usage()) == 1
    assert store.get(UA)['vm_state'] == 'active' and store.get_node('h1') is not None


def test_a_report_keeps_when_its_agent_sent_it(endpoint):
    assert endpoint.report({}, 'h1', [good()], None, sent_at=NOW_NS / 1e9 - 0.5) == 1
    assert endpoint.report({}, 'h1', [good(seq=NOW_NS - 5)]) == 1       # a 1.2 agent
    assert [r['sent_at'] for r in endpoint._store.list_reports('h1')] == [
        NOW_NS / 1e9 - 0.5, None]


@pytest.mark.parametrize('sent_at', ['now', -1.0, float('inf'), NOW_NS / 1e9 + 2 * 86400, True])
def test_a_report_with_a_bad_sent_at_is_refused_whole(endpoint, sent_at):
    with pytest.raises(exception.InvalidReport, match='sent_at'):
        endpoint.report({}, 'h1', [good()], usage(), sent_at=sent_at)
    assert endpoint._store.report_count() == 0 and endpoint._store.get(UA) is None


def test_a_report_that_fails_inside_the_transaction_is_rolled_back(endpoint):
    store = endpoint._store
    with pytest.raises(KeyError):       # past validation (a bug): still rolled back whole
        store.apply_report('h1', [good(uuid=UB)], {'generation': 5})
    assert store.get(UB) is None
    assert store.apply_report('h1', [good()]) == 1


def test_a_node_cannot_change_another_nodes_instances(endpoint):
    assert endpoint.report({}, 'h1', [good(seq=NOW_NS - 100)], None) == 1
    # A newer seq from another node: not applied; the owner's row stays.
    assert endpoint.report({}, 'h2', [good(seq=NOW_NS - 50, vm_state='deleted')], None) == 0
    row = endpoint._store.get(UA)
    assert (row['host'], row['vm_state']) == ('h1', 'active')
    # The owner goes on; once it deleted the instance, the uuid may live elsewhere.
    assert endpoint.report({}, 'h1', [good(seq=NOW_NS - 40, vm_state='deleted')], None) == 1
    assert endpoint.report({}, 'h2', [good(seq=NOW_NS - 30, vm_state='building')], None) == 1
    assert endpoint._store.get(UA)['host'] == 'h2'


@pytest.mark.parametrize('call, args', [
    ('get_instance', {'uuid': "x' OR 1=1"}),
    ('list_instances', {'host': 'a b'}),
    ('get_node', {'host': ''}),
    ('wait_instances', {'uuids': ['x'], 'states': ['active'], 'timeout': 1}),
    ('wait_instances', {'uuids': [UA], 'states': ['active'], 'timeout': 10 ** 9}),
])
def test_queries_check_their_arguments(endpoint, call, args):
    with pytest.raises(exception.InvalidReport):
        getattr(endpoint, call)({}, **args)
