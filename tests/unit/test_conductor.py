"""The conductor's store and the RPC error contract."""
import threading

from oslo_messaging._drivers import common as rpc_common

from agent import exception
from agent import rpc
from agent.conductor import db


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
