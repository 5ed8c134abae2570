"""The conductor's store on real databases (a SQLite file and PostgreSQL from
tools/setup-conductor-db.sh): two worker processes applying interleaved, reordered and
repeated reports for the same instances end in every instance's newest state; and a conductor
of two worker processes on PostgreSQL serving a real agent, through a worker's kill -9 and a
database restart, loses no final state; and a conductor (1 and 2 workers) restarted under a
stream of reports answers every one."""
import multiprocessing
import os
import random
import re
import subprocess
import time

import pytest

from agent.conductor import db
from tests.functional import conftest

N_INSTANCES = 60
N_REPORTS = 60
STATES = ('building', 'active', 'stopped', 'active', 'deleted')


def _uuid(i: int) -> str:
    return '%08x-1111-4000-8000-%012x' % (i, i)


def _reports(seed: int) -> list[list[dict]]:
    """N_REPORTS reports for N_INSTANCES instances; instance i's report k has seq k * 1000 + i
    and a state walking through STATES. Every report appears twice; all shuffled."""
    rnd = random.Random(seed)
    reports = []
    for k in range(1, N_REPORTS + 1):
        rows = [{'uuid': _uuid(i), 'seq': k * 1000 + i,
                 'vm_state': STATES[min(len(STATES) - 1, k * len(STATES) // N_REPORTS)],
                 'accepted_at': 1.0, 'active_at': 2.0 if k > 12 else None,
                 'name': 'r%d' % k} for i in range(N_INSTANCES)]
        rnd.shuffle(rows)
        reports.append(rows)
    reports = reports + reports
    rnd.shuffle(reports)
    return reports


def _worker(url: str, reports: list, started, out) -> None:
    store = db.InstanceStore(url)
    started.wait()
    try:
        applied = sum(store.apply_report('fhost', r) for r in reports)
        out.put(('ok', applied, store.retried))
    except Exception as exc:              # reported to the test
        out.put(('error', repr(exc), 0))
    finally:
        store.close()


def _two_workers(url: str) -> list:
    reports = _reports(11)
    ctx = multiprocessing.get_context('spawn')
    started, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, reports[i::2], started, out))
             for i in range(2)]
    for p in procs:
        p.start()
    time.sleep(2.0)                    # both imported and migrated
    started.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return results


def _newest(url: str, results: list) -> None:
    assert [r[0] for r in results] == ['ok', 'ok'], results
    store = db.InstanceStore(url)
    try:
        rows = {r['uuid']: r for r in store.list_instances('fhost')}
        assert len(rows) == N_INSTANCES
        for i in range(N_INSTANCES):
            row = rows[_uuid(i)]
            assert (row['seq'], row['vm_state'], row['name']) == (
                N_REPORTS * 1000 + i, 'deleted', 'r%d' % N_REPORTS), row
        assert store.report_count('fhost') == 2 * N_REPORTS
        # Each row applied at least once, never more often than there are newer seqs.
        assert N_INSTANCES <= sum(r[1] for r in results) <= 2 * N_REPORTS * N_INSTANCES
    finally:
        store.close()


def test_two_workers_on_sqlite_end_in_the_newest_state(tmp_path):
    url = db.url_of(str(tmp_path / 'conductor.sqlite'))
    _newest(url, _two_workers(url))


def test_two_workers_on_postgresql_end_in_the_newest_state(pg_url):
    _newest(pg_url, _two_workers(pg_url))


# -- a conductor of two workers on PostgreSQL, serving a real agent --------------------------
@pytest.fixture
def pg_node(tmp_path, pg_url):
    conftest._check_node()
    node = conftest.Node(str(tmp_path), conductor_db=pg_url, extra_config=(
        '[resources]\naudit_interval = 0\n[conductor]\nworkers = 2\n'))
    node.pg_url = pg_url
    yield from conftest._run_node(node, background=False)    # before its database goes


def _worker_pids(node) -> set[str]:
    """Pids of the conductor workers that applied reports (their log lines)."""
    with open(os.path.join(node.workdir, 'conductor.log'), errors='replace') as f:
        return set(re.findall(r'^\S+ \S+ (\d+) INFO agent.conductor.manager .*report from',
                              f.read(), re.M))


def _agree(node, uuids) -> None:
    """Every instance's row in the conductor is its agent's state."""
    held = {i['uuid']: i for i in node.compute.list_instances(node.host)}
    for uuid in uuids:
        agent = held.get(uuid, {'vm_state': 'deleted'})      # a deleted one is forgotten
        row = node.conductor.get_instance(uuid)
        assert row is not None, uuid
        assert row['vm_state'] == agent['vm_state'], (row, agent)
        if uuid in held:
            assert row['power_state'] == agent['power_state'], (row, agent)


def _restart_postgresql() -> None:
    conftest.settle_teardowns()            # no node is being torn down through it
    cluster = subprocess.run(['pg_lsclusters', '-h'], check=True, capture_output=True,
                             text=True).stdout.split()
    subprocess.run(['pg_ctlcluster', cluster[0], cluster[1], 'restart', '-m', 'fast'],
                   check=True, capture_output=True)


def _boot(node, n: int) -> list[str]:
    specs = [node.spec() for _ in range(n)]
    for spec in specs:
        node.boot(spec)
    return [spec['uuid'] for spec in specs]


def test_two_conductor_workers_on_postgresql_lose_no_final_state(pg_node):
    node = pg_node
    first = _boot(node, 4)
    rows = node.wait_ready(first)          # wait_instances: answered by either worker
    assert all(r['vm_state'] == 'active' for r in rows.values())
    _agree(node, first)
    assert len(_worker_pids(node)) == 2, 'both workers applied reports'
    # A second batch while one worker is killed and the database restarts.
    second = _boot(node, 4)
    workers = sorted(_worker_pids(node))
    os.kill(int(workers[0]), 9)
    _restart_postgresql()
    node.wait_ready(second)
    _agree(node, first + second)
    node.delete(first + second)
    node.wait_states(first + second, ['deleted'])
    _agree(node, first + second)
    with open(os.path.join(node.workdir, 'conductor.log'), errors='replace') as f:
        log = f.read()
    assert 'starting it again' in log          # the launcher replaced the killed worker
    assert len(_worker_pids(node)) >= 3


# -- a conductor stopped and started under a stream of reports -------------------------------
@pytest.mark.parametrize('workers', [1, 2])
def test_a_conductor_restart_answers_every_report_in_flight(tmp_path, workers):
    """Reports sent while the conductor stops wait in RabbitMQ for the next one: none is taken
    and dropped (oslo.messaging acknowledges on arrival; ``agent.rpc.drain``), so no sender
    waits for its timeout. Before, every report in flight at the stop timed out."""
    from agent.conductor import api as conductor_api
    conftest._check_node()
    node = conftest.Node(str(tmp_path), extra_config='[conductor]\nworkers = %d\n' % workers)
    # Signed as the node (its broker user is its agent's: these go with the control plane's).
    client = conductor_api.ReportAPI(node.transport, node.topic, node.report_key(), timeout=8)

    def report(i):
        client.report(node.host, [{'uuid': _uuid(1000 + i), 'seq': time.time_ns(),
                                   'vm_state': 'active', 'accepted_at': 1.0}], None)
    try:
        node.start('conductor')
        answered, timeouts = conftest.calls_through_restart(node, 'conductor', report, 12)
        assert timeouts == []
        # Every answered report was applied once, by one of the two conductors.
        assert node.conductor.report_count() == answered > 100
    finally:
        node.stop('conductor')
        node.cleanup()
