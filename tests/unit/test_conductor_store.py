"""The conductor's store on SQLAlchemy (SQLite here; PostgreSQL in the functional tests):
migrations make the schema the code reads, and the apply rules hold with several writers."""
import random
import sqlite3
import threading

import oslo_messaging
import pytest
import sqlalchemy as sa
from alembic import autogenerate
from alembic import migration
from sqlalchemy import exc as sa_exc

from agent.conductor import db
from agent.conductor import migrate
from agent.conductor import schema

UUIDS = ['%08x-0000-4000-8000-%012x' % (i, i) for i in range(40)]


def state(uuid, seq, vm_state='active', **extra):
    return dict({'uuid': uuid, 'seq': seq, 'vm_state': vm_state, 'accepted_at': 1.0}, **extra)


def test_the_migrated_schema_is_the_one_the_code_reads(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    assert store.revision == migrate.head()
    with store.engine.connect() as conn:
        diff = autogenerate.compare_metadata(migration.MigrationContext.configure(conn),
                                             schema.metadata)
    assert diff == []


def test_a_second_start_migrates_nothing_and_keeps_the_rows(tmp_path):
    path = str(tmp_path / 'c.sqlite')
    store = db.InstanceStore(path)
    store.apply_report('h1', [state(UUIDS[0], 5)])
    store.close()
    again = db.InstanceStore(path)
    assert again.revision == migrate.head() and again.get(UUIDS[0])['seq'] == 5


def test_a_pre_alembic_database_is_adopted_with_its_rows(tmp_path):
    path = str(tmp_path / 'old.sqlite')
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE instances (uuid TEXT PRIMARY KEY, host TEXT NOT NULL, name TEXT,
            vm_state TEXT NOT NULL, power_state TEXT, task TEXT, fault TEXT, boot_job TEXT,
            accepted_at REAL, active_at REAL, updated_at REAL, seq INTEGER NOT NULL,
            received_at REAL NOT NULL, readiness TEXT, ready_at REAL);
        CREATE INDEX instances_host ON instances(host);
        CREATE TABLE reports (id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL,
            received_at REAL NOT NULL, states INTEGER NOT NULL, applied INTEGER NOT NULL);
        CREATE TABLE nodes (host TEXT PRIMARY KEY, generation INTEGER NOT NULL,
            capacity TEXT NOT NULL, usage TEXT NOT NULL, inventory TEXT,
            instances INTEGER NOT NULL, reported_at REAL, received_at REAL NOT NULL);
        INSERT INTO instances (uuid, host, vm_state, seq, received_at)
            VALUES ('%s', 'h1', 'active', 7, 1.0);
        INSERT INTO reports (host, received_at, states, applied) VALUES ('h1', 1.0, 1, 1);
    """ % UUIDS[0])
    old.commit()
    old.close()
    store = db.InstanceStore(path)
    assert store.revision == migrate.head()
    assert store.get(UUIDS[0])['seq'] == 7 and store.report_count('h1') == 1
    assert store.apply_report('h1', [state(UUIDS[0], 8, ready_at=3.0, readiness='ready')]) == 1
    assert store.get(UUIDS[0])['ready_seen_at'] is not None
    store.apply_report('h1', [], {'generation': 1, 'capacity': {}, 'usage': {}, 'instances': 0,
                                  'reserved': {'disk_gb': 2}})
    assert store.get_node('h1')['reserved'] == {'disk_gb': 2}


def test_a_database_at_an_older_revision_is_upgraded_in_place_with_its_rows(tmp_path):
    from alembic import command
    path = str(tmp_path / 'c.sqlite')
    engine = sa.create_engine('sqlite:///' + path)
    with engine.connect() as conn:
        command.upgrade(migrate._config(conn), '0001')
        conn.commit()
        conn.execute(sa.text("INSERT INTO reports (host, received_at, states, applied) "
                             "VALUES ('h1', 1, 1, 1)"))
        conn.commit()
        assert 'sent_at' not in {c['name'] for c in sa.inspect(conn).get_columns('reports')}
    engine.dispose()
    store = db.InstanceStore(path)
    assert store.revision == migrate.head() != '0001'
    store.apply_report('h1', [state(UUIDS[0], 5)], sent_at=2.5)
    assert [(r['received_at'] == 1.0, r['sent_at']) for r in store.list_reports('h1')] == [
        (True, None), (False, 2.5)]


def test_several_states_of_one_instance_in_a_report_apply_as_its_newest(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    u = UUIDS[0]
    assert store.apply_report('h1', [state(u, 3, 'active', active_at=2.0),
                                     state(u, 1, 'building'), state(u, 2, 'building')]) == 1
    row = store.get(u)
    assert (row['seq'], row['vm_state'], row['active_at']) == (3, 'active', 2.0)
    assert row['active_seen_at'] == row['received_at']


def _reports():
    """40 reports x 40 instances, every instance's seq rising report by report (its newest:
    40 * 100 + i); shuffled, each report's rows shuffled."""
    rnd = random.Random(7)
    out = []
    for k in range(1, 41):
        rows = [state(u, k * 100 + i, 'building' if k < 20 else 'active',
                      active_at=None if k < 20 else 5.0) for i, u in enumerate(UUIDS)]
        rnd.shuffle(rows)
        out.append(rows)
    rnd.shuffle(out)
    return out


def _newest(store) -> None:
    rows = {r['uuid']: r for r in store.list_instances('h1')}
    assert sorted(rows) == sorted(UUIDS)
    for i, u in enumerate(UUIDS):
        assert (rows[u]['seq'], rows[u]['vm_state']) == (4000 + i, 'active'), rows[u]


def test_two_writers_applying_reordered_reports_end_in_the_newest_state(tmp_path):
    """Two stores (two engines, as two workers have) on one SQLite file, two threads each."""
    path = str(tmp_path / 'c.sqlite')
    stores = [db.InstanceStore(path), db.InstanceStore(path)]
    reports = _reports()
    errors = []

    def work(store, share):
        try:
            for r in share:
                store.apply_report('h1', r)
        except Exception as exc:        # surfaced below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(stores[i % 2], reports[i::4]))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _newest(stores[0])
    assert stores[1].report_count('h1') == 40


def test_a_transaction_the_database_gives_up_is_tried_again(tmp_path, monkeypatch):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    real = store._apply
    calls = []

    def flaky(conn, *args):
        calls.append(1)
        if len(calls) == 1:
            raise sa_exc.OperationalError('INSERT', {}, sqlite3.OperationalError(
                'database is locked'))
        return real(conn, *args)
    monkeypatch.setattr(store, '_apply', flaky)
    monkeypatch.setattr(db.time, 'sleep', lambda s: None)
    assert store.apply_report('h1', [state(UUIDS[0], 1)]) == 1
    assert len(calls) == 2 and store.retried == 1 and store.report_count() == 1


def test_any_other_database_error_fails_the_report_and_changes_nothing(tmp_path, monkeypatch):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    real = store._apply

    def broken(conn, *args):
        real(conn, *args)
        raise sa_exc.IntegrityError('INSERT', {}, sqlite3.IntegrityError('no'))
    monkeypatch.setattr(store, '_apply', broken)
    with pytest.raises(sa_exc.IntegrityError):
        store.apply_report('h1', [state(UUIDS[0], 1)])
    assert store.get(UUIDS[0]) is None and store.report_count() == 0


def test_a_plain_path_is_a_sqlite_file():
    assert db.url_of('/x/c.sqlite') == 'sqlite:////x/c.sqlite'
    assert db.url_of('postgresql+psycopg2://u@h/d') == 'postgresql+psycopg2://u@h/d'


def test_database_size(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    assert store.size_bytes() > 0
    assert isinstance(store.engine, sa.engine.Engine)


def test_pruning_deletes_only_old_report_records(tmp_path):
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    store.apply_report('h1', [state(UUIDS[0], 1)])
    with store.engine.begin() as conn:      # one record from long ago
        conn.execute(schema.reports.insert().values(host='h1', received_at=1.0, states=1,
                                                    applied=1))
    assert store.report_count('h1') == 2
    assert store.prune_reports(1000.0) == 1
    assert store.report_count('h1') == 1 and store.get(UUIDS[0])['seq'] == 1
    assert store.prune_reports(1000.0) == 0


@pytest.mark.parametrize('worker, pruned', [(None, True), (0, True), (1, False)])
def test_the_first_conductor_worker_prunes_old_report_records(tmp_path, conf, worker, pruned):
    from agent.conductor import service
    conf.set_override('database', str(tmp_path / 'c.sqlite'), group='conductor')
    conf.set_override('reports_retention', 60.0, group='conductor')
    oslo_messaging.get_rpc_transport(conf, url='fake:/').cleanup()    # registers its options
    conf.set_override('transport_url', 'fake:/')
    svc = service.ConductorService(conf, worker)
    svc.store.apply_report('h1', [state(UUIDS[0], 1)])
    with svc.store.engine.begin() as conn:
        conn.execute(schema.reports.insert().values(host='h1', received_at=1.0, states=1,
                                                    applied=1))
    svc.start()
    threading.Timer(1.5, svc._stop.set).start()
    svc.wait()                                  # one turn of its loop, then stopped
    store = db.InstanceStore(str(tmp_path / 'c.sqlite'))
    assert store.report_count('h1') == (1 if pruned else 2)
    store.close()
