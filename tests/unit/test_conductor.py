"""The conductor's store and the RPC error contract."""
import concurrent.futures
import logging
import os
import threading
import uuid as uuidlib

import oslo_messaging
import pytest
from oslo_messaging._drivers import common as rpc_common

from agent import exception
from agent import report as reportmod
from agent import rpc
from agent import signing
from agent.conductor import db
from agent.conductor import keys
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


def _key(keys_dir, host: str) -> bytes:
    """Node ``host``'s key, made on first use (as tools/setup-node.sh --node does)."""
    path = keys_dir / (host + '.key')
    if not path.exists():
        path.write_text(os.urandom(32).hex() + '\n')
        path.chmod(0o600)
    return signing.parse_key(path.read_text())


class Endpoint:
    """The conductor's endpoints called as oslo.messaging's dispatcher calls them: an error
    they expect comes out as the agent's own exception (what the RPC caller gets). ``report``
    signs with the reporting node's own key unless given ``sig``."""

    def __init__(self, store, keys_dir, max_rows=2000, max_waits=32):
        self._store = store
        self.keys_dir = keys_dir
        self.reports = manager.ReportEndpoint(store, keys.NodeKeys(str(keys_dir)),
                                              max_future_s=3600, max_rows=max_rows,
                                              clock_ns=lambda: NOW_NS)
        self.control = manager.ControlEndpoint(store, max_waits)

    @staticmethod
    def _expected(method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except oslo_messaging.ExpectedException as exc:
            raise exc.exc_info[1] from None

    def report(self, ctxt, host, states, resources=None, sent_at=None, **sig):
        if 'sig' not in sig:
            try:
                sig['sig'] = signing.sign(_key(self.keys_dir, host), host, states, resources,
                                          sent_at)
            except ValueError:       # NaN or infinity: not JSON, so no node can sign it
                sig['sig'] = '0' * 64
        return self._expected(self.reports.report, ctxt, host, states, resources, sent_at,
                              **sig)

    def __getattr__(self, name):
        method = getattr(self.control, name)
        return lambda *args, **kwargs: self._expected(method, *args, **kwargs)


@pytest.fixture
def endpoint(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    keys_dir = tmp_path / 'keys'
    keys_dir.mkdir()
    yield Endpoint(store, keys_dir)
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
    ([good()], usage(generation=float('nan')), 'not signed'),
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
    with pytest.raises(exception.InvalidReport, match='sent_at|not signed'):
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


# -- reports prove their node ------------------------------------------------------------------
def test_a_report_applies_only_signed_with_its_own_nodes_key(endpoint):
    states = [good()]
    h2_key = _key(endpoint.keys_dir, 'h2')
    for sig in (None, '', 'x' * 64, signing.sign(h2_key, 'h1', states, None, None),
                signing.sign(h2_key, 'h2', states, None, None)):
        with pytest.raises(exception.InvalidReport, match="h1: not signed with that node's key"):
            endpoint.report({}, 'h1', states, None, sig=sig)
    with pytest.raises(exception.InvalidReport, match='not signed'):     # no key at all
        endpoint.report({}, 'h3', states, None, sig=signing.sign(h2_key, 'h3', states, None,
                                                                 None))
    # Signed, then changed on the way: refused.
    sig = signing.sign(_key(endpoint.keys_dir, 'h1'), 'h1', states, None, None)
    with pytest.raises(exception.InvalidReport, match='not signed'):
        endpoint.report({}, 'h1', [good(vm_state='deleted')], None, sig=sig)
    assert endpoint._store.report_count() == 0
    assert endpoint.report({}, 'h1', states, None, sig=sig) == 1


def test_a_rotated_or_loose_key_takes_effect_at_the_next_report(endpoint):
    assert endpoint.report({}, 'h1', [good()]) == 1
    path = endpoint.keys_dir / 'h1.key'
    old = _key(endpoint.keys_dir, 'h1')
    new = endpoint.keys_dir / 'h1.key.new'                 # rotated (a new file, renamed)
    new.write_text(os.urandom(32).hex())
    new.chmod(0o600)
    new.rename(path)
    states = [good(seq=NOW_NS - 5)]
    with pytest.raises(exception.InvalidReport, match='not signed'):
        endpoint.report({}, 'h1', states, sig=signing.sign(old, 'h1', states, None, None))
    assert endpoint.report({}, 'h1', states) == 1          # signed with the new key
    path.chmod(0o644)                                       # readable by others: not used
    with pytest.raises(exception.InvalidReport, match='not signed'):
        endpoint.report({}, 'h1', [good(seq=NOW_NS - 4)])
    last = signing.parse_key(path.read_text())
    path.unlink()                                           # node removed
    states = [good(seq=NOW_NS - 3)]
    with pytest.raises(exception.InvalidReport, match='not signed'):
        endpoint.report({}, 'h1', states, sig=signing.sign(last, 'h1', states, None, None))


def test_a_squatted_uuid_stays_with_its_node_until_the_control_plane_moves_it(endpoint):
    assert endpoint.report({}, 'h2', [good(seq=NOW_NS - 100)]) == 1     # h2 squats UA
    assert endpoint.report({}, 'h1', [good(seq=NOW_NS - 50)]) == 0      # h1's own: not applied
    assert endpoint._store.get(UA)['host'] == 'h2'
    assert endpoint.move_instance({}, UA, 'h1') is True
    assert endpoint.report({}, 'h1', [good(seq=NOW_NS - 40)]) == 1
    assert endpoint.report({}, 'h2', [good(seq=NOW_NS - 30, vm_state='error')]) == 0
    assert endpoint._store.get(UA)['host'] == 'h1'
    assert endpoint.forget_instance({}, UA) is True
    assert endpoint.get_instance({}, UA) is None and endpoint.forget_instance({}, UA) is False


def test_a_node_holds_at_most_its_cap_of_live_rows(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    ep = Endpoint(store, tmp_path, max_rows=3)
    uuids = ['%08d-0000-4000-8000-000000000000' % i for i in range(5)]
    assert ep.report({}, 'h1', [good(uuid=u) for u in uuids]) == 3
    assert len(store.list_instances('h1')) == 3
    assert ep.report({}, 'h2', [good(uuid=UA)]) == 1                    # others unaffected
    held = sorted(r['uuid'] for r in store.list_instances('h1'))
    # Updates of held rows go on; a deleted one makes room for a new one.
    assert ep.report({}, 'h1', [good(uuid=held[0], seq=NOW_NS - 5, vm_state='deleted')]) == 1
    assert ep.report({}, 'h1', [good(uuid=uuids[4], seq=NOW_NS - 5)]) == 1
    assert ep.report({}, 'h1', [good(uuid=uuids[3], seq=NOW_NS - 5)]) == 0
    store.close()


def test_deleted_rows_are_pruned_after_their_retention(endpoint):
    store = endpoint._store
    endpoint.report({}, 'h1', [good(uuid=UA, vm_state='deleted'), good(uuid=UB)])
    assert store.prune_deleted(before=0.0) == 0             # received after 0: kept
    assert store.prune_deleted(before=2e10) == 1
    assert store.get(UA) is None and store.get(UB) is not None


def test_one_log_line_per_report(endpoint, caplog):
    caplog.set_level(logging.DEBUG, logger='agent.conductor')
    uuids = ['%08d-0000-4000-8000-000000000000' % i for i in range(50)]
    endpoint.report({}, 'h1', [good(uuid=u) for u in uuids], usage())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert lines[0].startswith('report from h1: 50 states, 50 applied')


def test_waits_are_bounded_and_a_wait_holds_nothing_reports_need(tmp_path):
    """Three waits at once with max_waits = 2: one is refused (while the two others wait:
    they end only with the report below); the report is not held up, and wakes them."""
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    ep = Endpoint(store, tmp_path, max_waits=2)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        waits = [pool.submit(ep.wait_instances, {}, [UA], ['active'], 60) for _ in range(3)]
        done, _ = concurrent.futures.wait(waits, return_when=concurrent.futures.FIRST_COMPLETED)
        assert len(done) == 1
        with pytest.raises(exception.TooManyWaits):
            next(iter(done)).result()
        assert ep.report({}, 'h1', [good()]) == 1
        rows = [w.result(30) for w in waits if w not in done]
    assert [r[UA]['vm_state'] for r in rows if r] == ['active', 'active']
    store.close()


def test_a_report_stores_its_jobs_and_domain_and_a_2_0_report_leaves_them_unknown(endpoint):
    job, other = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    assert endpoint.report({}, 'h1', [good(delete_job=job, power_job=other,
                                           domain='ca-' + UA)]) == 1
    row = endpoint.get_instance({}, UA)
    assert (row['delete_job'], row['power_job'], row['domain']) == (job, other, 'ca-' + UA)
    two_oh = {f: v for f, v in good(seq=NOW_NS - 4).items()
              if f in reportmod.fields('2.0')}                 # an agent capped at 2.0
    assert endpoint.report({}, 'h1', [two_oh]) == 1
    row = endpoint.get_instance({}, UA)
    assert (row['delete_job'], row['power_job'], row['domain']) == (None, None, None)


@pytest.mark.parametrize('field, value', [('delete_job', 'not-a-uuid'), ('power_job', 7),
                                          ('domain', 'x' * 300)])
def test_a_report_with_a_bad_job_or_domain_is_refused(endpoint, field, value):
    with pytest.raises(exception.InvalidReport, match=field):
        endpoint.report({}, 'h1', [good(**{field: value})])
