"""Chrome trace recording: one well-formed track per instance, over the fake libvirt and LVM."""
import json
import uuid as uuidlib

import pytest

from agent import context
from agent import exception
from agent import trace
from tests import trace_format
from tests.unit import fakelibvirt
from tests.unit.conftest import Agent, boot_spec

LIBVIRT_HOT_PATH = ['wait libvirt.defineXML', 'libvirt.defineXML', 'wait libvirt.createWithFlags',
                    'libvirt.createWithFlags']


def _slices(events, cat=None):
    return [e for e in events if e['ph'] == 'X' and (cat is None or e['cat'] == cat)]


def test_each_boot_gets_a_nested_track_with_its_request_job_calls_and_reports(conf, hv, tmp_path):
    path = str(tmp_path / 'trace.json')
    tracer = trace.Tracer(path, 'compute-agent node1')
    a = Agent(conf, hv, tracer=tracer)
    try:
        uuids = [str(uuidlib.uuid4()) for _ in range(5)]
        answers = [a.manager.requests.boot_instance(boot_spec(u, **({'disk_gb': 1} if i == 0 else {})))
                   for i, u in enumerate(uuids)]
        for answer in answers:
            assert a.wait_job(answer['job_id'])['state'] == 'done'
        for u in uuids:
            a.wait_reported(u, 'active')
        deleted = a.manager.requests.delete_instance(uuids[1])
        assert a.wait_job(deleted['job_id'])['state'] == 'done'
        a.wait_reported(uuids[1], 'deleted')
        a.journal.flush(10)
        written = tracer.write()
    finally:
        a.stop()
    assert written['path'] == path and written['dropped'] == 0
    tracks = trace_format.load(path)       # parses, names every track, checks nesting

    for i, u in enumerate(uuids):
        events = tracks['instance %s' % u]
        assert trace_format.names_in(events, 'boot_instance') == [
            'validate', 'lock wait', 'claim', 'journal wait']
        request = next(e for e in events if e['name'] == 'boot_instance')
        job = next(e for e in events if e['name'] == 'boot job')
        assert request['ts'] + request['dur'] <= job['ts']     # answered, then run
        assert request['args']['job_id'] == answers[i]['job_id']
        assert job['args']['state'] == 'done'
        in_job = trace_format.names_in(events, 'boot job', slices_only=True)
        assert in_job[-4:] == LIBVIRT_HOT_PATH
        assert len(_slices([e for e in events if e['name'] in in_job], 'libvirt')) == 2
        if i == 0:
            assert in_job[:2] == ['wait cmd.lvcreate', 'cmd.lvcreate']
        names = trace_format.names_in(events)
        assert 'ACTIVE' in names and 'reported active' in names   # building may be coalesced
        assert names.index('ACTIVE') < names.index('reported active')
    gone = trace_format.names_in(tracks['instance %s' % uuids[1]], 'delete job')
    assert 'libvirt.destroy' in gone and 'libvirt.undefine' in gone
    assert trace_format.names_in(tracks['instance %s' % uuids[1]])[-1] == 'reported deleted'

    assert set(trace_format.names_in(tracks['journal'])) == {'wait journal.commit',
                                                             'journal.commit'}
    reports = _slices(tracks['conductor reports'])
    assert reports and {e['name'] for e in reports} == {'report'}
    assert sum(e['args']['states'] for e in reports) == a.reporter.states_sent
    assert 'libvirt.open' in trace_format.names_in(tracks['start-up'])
    with open(path) as f:
        doc = json.load(f)
    process = [e for e in doc['traceEvents'] if e['name'] == 'process_name']
    assert process[0]['args']['name'] == 'compute-agent node1'


def test_a_failed_boot_is_traced_with_the_failed_call(conf, hv, tmp_path):
    tracer = trace.Tracer(str(tmp_path / 'trace.json'))
    a = Agent(conf, hv, tracer=tracer)
    try:
        hv.fail_next['createWithFlags'] = fakelibvirt.libvirtError(
            'internal error: qemu unexpectedly closed the monitor')
        answer = a.manager.requests.boot_instance(boot_spec())
        assert a.wait_job(answer['job_id'])['state'] == 'failed'
        tracer.write()
    finally:
        a.stop()
    events = trace_format.load(tracer.path)['instance %s' % boot_spec()['uuid']]
    create = next(e for e in events if e['name'] == 'libvirt.createWithFlags')
    assert create['args'] == {'failed': True}
    assert next(e for e in events if e['name'] == 'boot job')['args']['state'] == 'failed'
    assert 'libvirt.undefine' in trace_format.names_in(events, 'boot job')


def test_events_past_the_limit_are_counted_as_dropped(tmp_path):
    clock = iter(range(100)).__next__
    tracer = trace.Tracer(str(tmp_path / 't.json'), max_events=3, clock=clock)
    for _ in range(5):
        tracer.complete('x', 'test', 1, 2, track='t')
    written = tracer.write()
    assert (written['events'], written['dropped']) == (3, 2)
    with open(tracer.path) as f:
        doc = json.load(f)
    assert doc['otherData']['dropped_events'] == 2
    trace_format.check(doc)


def test_tracing_off_records_nothing(tmp_path):
    null = trace.NullTracer()
    with context.working(uuid='u'):
        null.complete('x', 'test', 0, 1)
        null.on_call('libvirt.create', 0, 1, 2, False)
    assert null.write() == {'enabled': False}


def test_a_failed_write_raises_a_clear_error_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / 'trace.json'
    tracer = trace.Tracer(str(path))
    tracer.complete('x', 'test', 0, 1, track='t')
    tracer.write()
    before = path.read_bytes()
    tracer.complete('y', 'test', 1, 2, track='t', unserialisable=object())   # fails mid-write
    with pytest.raises(exception.TraceWriteFailed) as err:
        tracer.write()
    assert str(path) in str(err.value) and 'not JSON serializable' in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['trace.json']
    assert path.read_bytes() == before              # the last good trace stays
    (tmp_path / 'blocker').write_text('')
    with pytest.raises(exception.TraceWriteFailed):
        tracer.write(str(tmp_path / 'blocker' / 'trace.json'))   # its directory is a file


def test_a_refused_boot_request_leaves_no_spans_and_an_accepted_one_all_its_phases(
        conf, hv, tmp_path):
    tracer = trace.Tracer(str(tmp_path / 'trace.json'), 'compute-agent node1')
    a = Agent(conf, hv, tracer=tracer)
    try:
        refused = str(uuidlib.uuid4())
        with pytest.raises(exception.InsufficientResources):
            a.manager.requests.boot_instance(boot_spec(refused, memory_mb=10 ** 6, vcpus=1))
        assert not [e for e in tracer.events() if e.get('cat') in ('request', 'rpc')]
        accepted = str(uuidlib.uuid4())
        a.wait_job(a.manager.requests.boot_instance(boot_spec(accepted))['job_id'])
        names = [e['name'] for e in _slices(tracer.events()) if e['cat'] in ('request', 'rpc')]
        assert names == ['validate', 'lock wait', 'claim', 'journal wait', 'boot_instance']
    finally:
        a.stop()


def test_requests_are_timed_for_the_metrics_with_tracing_off():
    request = trace.NullTracer().request('boot_instance')
    with request.phase('validate'):
        pass
    assert request.finish(uuid='u') >= 0 and request.seconds >= 0
