"""The conductor's store: the latest state of every instance and the latest usage of every
node, on SQLAlchemy (SQLite embedded by default; PostgreSQL for a fleet).

An instance row is applied only if its ``seq`` is newer than the stored one, and a node's usage
only if its ``generation`` is higher, so reports that arrive late or twice never roll back.
An instance belongs to the node that first reported it: another node's state for it is not
applied (unless the instance was deleted) until the control plane forgets or moves the row;
a node holds at most ``max_rows`` live rows. These rules are conditions inside the database's
own upserts (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``), never read-then-write in
Python, so several conductor workers may apply reports for the same rows at once: each row's
newest state wins whatever the order. A report is one transaction (rolled back whole if any
part fails); rows are written in uuid order, so two reports never wait on each other's rows in
a cycle. A transaction the database aborted (deadlock, serialization, a restart) is tried
again. Reports are checked (``validate``) before they get here.
"""
import json
import logging
import os
import threading
import time
import typing

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from agent import crashpoints
from agent.conductor import migrate
from agent import report as reportmod
from agent.conductor import schema

LOG = logging.getLogger(__name__)

FIELDS = tuple(reportmod.FIELDS)       # what a report says of an instance (uuid first)
# When the conductor first stored the current active_at / ready_at (a report's lag is
# ``*_seen_at - *_at``): kept while a later report repeats the same time.
SEEN = (('active_seen_at', 'active_at'), ('ready_seen_at', 'ready_at'))
COLUMNS = FIELDS + ('received_at',) + tuple(seen for seen, _ in SEEN)
NODE_COLUMNS = ('host', 'generation', 'capacity', 'usage', 'inventory', 'instances',
                'reported_at', 'received_at', 'reserved')
RETRIES = 5
_INSERT = {'postgresql': postgresql.insert, 'sqlite': sqlite.insert}


def url_of(database: str) -> str:
    """A SQLAlchemy URL; a plain path is a SQLite file."""
    return database if '://' in database else 'sqlite:///' + os.path.abspath(database)


def make_engine(url: str, pool_size: int = 8) -> sa.engine.Engine:
    """An engine for ``url``: SQLite in WAL mode with write transactions that take the write
    lock first (``BEGIN IMMEDIATE``) and wait up to 30 s for it; PostgreSQL with a pool that
    checks a connection before use (a database restart costs one failed check, not a report)."""
    if url.startswith('sqlite'):
        path = sa.engine.make_url(url).database
        if path and path != ':memory:':
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = sa.create_engine(url, connect_args={'timeout': 30, 'check_same_thread': False,
                                                     'isolation_level': None})

        @sa.event.listens_for(engine, 'connect')
        def _pragmas(dbapi_conn, _record):
            dbapi_conn.execute('PRAGMA journal_mode=WAL')
            dbapi_conn.execute('PRAGMA synchronous=NORMAL')

        @sa.event.listens_for(engine, 'begin')
        def _begin(conn):
            immediate = conn.get_execution_options().get('write', False)
            conn.exec_driver_sql('BEGIN IMMEDIATE' if immediate else 'BEGIN')
        return engine
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                            pool_pre_ping=True, pool_recycle=3600)


def _retryable(exc: Exception) -> bool:
    """A transaction the database gave up on (deadlock, serialization, a locked SQLite file)
    or a connection it dropped or refused (a restart): try again. Bad data is not retried."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa_exc.OperationalError)


def _upserts(insert) -> tuple:
    """The two conditional upserts, built once: executed with each report's rows as
    parameters, they compile once per process (SQLAlchemy caches the compiled form), where
    a statement built around each report's values compiled anew every time.

    Instances: ``INSERT ... ON CONFLICT (uuid) DO UPDATE ... WHERE excluded.seq > seq AND
    (same host OR deleted) RETURNING uuid`` (one row back per row applied); a ``*_seen_at``
    keeps its time while a later state repeats the same ``*_at``. Nodes: ``... WHERE
    excluded.generation > generation``."""
    t = schema.instances
    stmt = insert(t)
    new = stmt.excluded
    update = {f: new[f] for f in FIELDS[1:] + ('received_at',)}
    for seen, at in SEEN:
        update[seen] = sa.case((new[at].is_(None), None),
                               (new[at].is_not_distinct_from(t.c[at]), t.c[seen]),
                               else_=new.received_at)
    instances = stmt.on_conflict_do_update(
        index_elements=[t.c.uuid], set_=update,
        where=sa.and_(new.seq > t.c.seq,
                      sa.or_(t.c.host == new.host, t.c.vm_state == 'deleted'))
    ).returning(t.c.uuid)
    n = schema.nodes
    stmt = insert(n)
    nodes = stmt.on_conflict_do_update(
        index_elements=[n.c.host], set_={c: stmt.excluded[c] for c in NODE_COLUMNS[1:]},
        where=stmt.excluded.generation > n.c.generation)
    return instances, nodes


class Applied(typing.NamedTuple):
    """What a report changed: rows applied; uuids other nodes hold; new uuids over the
    node's row cap."""
    applied: int
    foreign: list
    over_cap: list


class InstanceStore:
    """Thread-safe; every change this process makes wakes ``wait_for`` callers; with
    ``wait_poll`` (several workers) they also look again that often for what other workers
    applied."""

    def __init__(self, database: str, pool_size: int = 8, wait_poll: float | None = None):
        self.url = url_of(database)
        self.engine = make_engine(self.url, pool_size)
        self.dialect = self.engine.dialect.name
        if self.dialect not in _INSERT:
            raise ValueError('conductor database: sqlite or postgresql, not %s' % self.dialect)
        self.revision = migrate.upgrade(self.engine)
        self._upsert_instances, self._upsert_node = _upserts(_INSERT[self.dialect])
        self._wait_poll = wait_poll
        self._cond = threading.Condition()
        self._generation = 0               # changes this process made (wakes waits)
        self.retried = 0

    def _retrying(self, what: str, fn, *args):
        """``fn(*args)``, tried again (up to RETRIES times, backing off) when the database
        gave up the transaction or the connection."""
        for attempt in range(RETRIES):
            try:
                return fn(*args)
            except sa_exc.DBAPIError as exc:
                if attempt == RETRIES - 1 or not _retryable(exc):
                    raise
                self.retried += 1
                LOG.warning('%s: the database gave up (%s); trying again', what,
                            str(exc).splitlines()[0])
                time.sleep(min(2.0, 0.1 * 2 ** attempt))

    # -- writes --------------------------------------------------------------------------
    def _write(self, what: str, fn, *args):
        """``fn(conn, *args)`` in one write transaction (SQLite: the write lock first),
        tried again when the database gave it up (``_retrying``)."""
        def once():
            with self.engine.connect().execution_options(write=True) as conn:
                with conn.begin():
                    return fn(conn, *args)
        return self._retrying(what, once)

    def apply_report(self, host: str, states: list[dict], resources: dict | None = None,
                     sent_at: float | None = None) -> int:
        """``apply``: how many instance rows applied."""
        return self.apply(host, states, resources, sent_at).applied

    def apply(self, host: str, states: list[dict], resources: dict | None = None,
              sent_at: float | None = None, max_rows: int | None = None) -> 'Applied':
        """Store the newer of each state, and the node's usage if its generation is higher;
        one transaction per report, rolled back whole if any part fails. A row another node
        holds (not deleted) stays that node's; with ``max_rows``, new rows beyond that many
        live rows of ``host`` are not stored. ``sent_at``: the agent's clock when it sent
        the report."""
        result = self._write('report from %s' % host, self._apply, host, states, resources,
                             sent_at, max_rows)
        crashpoints.reached('conductor.store.after_commit', *(s.get('uuid') for s in states))
        self._changed()
        return result

    def _changed(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _apply(self, conn, host: str, states: list[dict], resources: dict | None,
               sent_at: float | None, max_rows: int | None) -> 'Applied':
        now = time.time()
        newest: dict[str, dict] = {}           # one row per uuid: its newest state
        for state in states:
            row = {f: state.get(f) for f in FIELDS}
            old = newest.get(row['uuid'])
            if old is None or row['seq'] > old['seq']:
                newest[row['uuid']] = row
        applied, foreign, over_cap = 0, [], []
        if newest:
            t = schema.instances
            held = {r.uuid: (r.host, r.vm_state) for r in conn.execute(
                sa.select(t.c.uuid, t.c.host, t.c.vm_state).where(t.c.uuid.in_(list(newest))))}
            foreign = [u for u, (h, vm) in held.items() if h != host and vm != 'deleted']
            # rows that would become live rows of this node (none yet, or deleted)
            new = sorted(u for u in newest if u not in foreign
                         and newest[u]['vm_state'] != 'deleted'
                         and (u not in held or held[u][0] != host or held[u][1] == 'deleted'))
            if max_rows is not None and new:
                live = conn.execute(sa.select(sa.func.count()).select_from(t).where(
                    t.c.host == host, t.c.vm_state != 'deleted')).scalar_one()
                room = max(0, max_rows - live)
                over_cap = new[room:]
            rows = []
            for uuid in sorted(set(newest) - set(foreign) - set(over_cap)):
                row = newest[uuid]
                row.update(host=host, received_at=now)
                for seen, at in SEEN:
                    row[seen] = None if row[at] is None else now
                rows.append(row)
            # Rows the condition skipped return nothing: the rest were applied.
            if rows:
                applied = len(conn.execute(self._upsert_instances, rows).all())
        node_applied = None
        if resources is not None:
            node_applied = conn.execute(self._upsert_node, {
                'host': host, 'generation': int(resources['generation']),
                'capacity': json.dumps(resources['capacity']),
                'usage': json.dumps(resources['usage']),
                'inventory': json.dumps(resources.get('inventory')),
                'instances': int(resources['instances']),
                'reported_at': resources.get('at'), 'received_at': now,
                'reserved': json.dumps(resources.get('reserved'))}).rowcount
        conn.execute(schema.reports.insert(), {
            'host': host, 'received_at': now, 'states': len(states), 'applied': applied,
            'generation': None if resources is None else int(resources['generation']),
            'node_applied': node_applied, 'sent_at': sent_at})
        crashpoints.reached('conductor.store.before_commit', *newest)
        return Applied(applied, foreign, over_cap)

    # -- the control plane's corrections ---------------------------------------------------
    def forget(self, uuid: str) -> bool:
        """Delete an instance's row; whether there was one."""
        t = schema.instances
        gone = self._write('forgetting %s' % uuid, lambda conn: conn.execute(
            t.delete().where(t.c.uuid == uuid)).rowcount)
        self._changed()
        return bool(gone)

    def move(self, uuid: str, host: str) -> bool:
        """Give an instance's row to ``host`` (its later reports apply); whether there was
        one."""
        t = schema.instances
        moved = self._write('moving %s' % uuid, lambda conn: conn.execute(
            t.update().where(t.c.uuid == uuid).values(host=host)).rowcount)
        self._changed()
        return bool(moved)

    def prune_deleted(self, before: float) -> int:
        """Delete the rows of instances deleted (as last reported) before ``before``
        (epoch seconds); how many."""
        t = schema.instances

        def delete(conn):
            return conn.execute(t.delete().where(t.c.vm_state == 'deleted',
                                                 t.c.received_at < before)).rowcount
        return self._write('pruning deleted instances', delete)

    # -- reads ---------------------------------------------------------------------------
    def _rows(self, where=None) -> list[dict]:
        # received_at: when the conductor got the current state.
        t = schema.instances
        query = sa.select(*(t.c[c] for c in COLUMNS)).order_by(t.c.accepted_at, t.c.uuid)
        if where is not None:
            query = query.where(where)

        def once():
            with self.engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(query)]
        return self._retrying('reading instances', once)

    def get(self, uuid: str) -> dict | None:
        """One instance's row, or None."""
        rows = self._rows(schema.instances.c.uuid == uuid)
        return rows[0] if rows else None

    def list_instances(self, host: str | None = None) -> list[dict]:
        """Every instance row, or those of one host."""
        return self._rows(schema.instances.c.host == host if host else None)

    def report_count(self, host: str | None = None) -> int:
        """The number of reports applied (from one host, or all)."""
        query = sa.select(sa.func.count()).select_from(schema.reports)
        if host:
            query = query.where(schema.reports.c.host == host)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def get_node(self, host: str) -> dict | None:
        """A node's last applied usage report, or None."""
        t = schema.nodes
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*(t.c[c] for c in NODE_COLUMNS))
                               .where(t.c.host == host)).first()
        if row is None:
            return None
        out = dict(row._mapping)
        for c in ('capacity', 'usage', 'inventory', 'reserved'):
            out[c] = json.loads(out[c] or 'null')
        return out

    def list_reports(self, host: str) -> list[dict]:
        """Every report received from ``host``, oldest first."""
        t = schema.reports
        cols = ('received_at', 'sent_at', 'states', 'applied', 'generation', 'node_applied')
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*(t.c[c] for c in cols))
                                .where(t.c.host == host).order_by(t.c.id))
            return [dict(r._mapping) for r in rows]

    def prune_reports(self, before: float) -> int:
        """Delete the records of reports received before ``before`` (epoch seconds); how
        many. The instance and node rows they updated stay."""
        def delete(conn):
            return conn.execute(schema.reports.delete().where(
                schema.reports.c.received_at < before)).rowcount
        return self._write('pruning reports', delete)

    def size_bytes(self) -> int:
        """The database's size on disk (PostgreSQL: the database; SQLite: file + WAL)."""
        if self.dialect == 'postgresql':
            with self.engine.connect() as conn:
                return conn.execute(sa.text('SELECT pg_database_size(current_database())')
                                    ).scalar_one()
        path = self.engine.url.database
        return sum(os.path.getsize(p) for p in (path, path + '-wal') if os.path.exists(p))

    def wait_for(self, uuids: list[str], states: list[str], timeout: float,
                 ready: bool = False) -> dict:
        """Block until every uuid is in one of ``states`` (and, with ``ready``, its guest is
        ready), or until ``timeout``. Returns {uuid: row or None}."""
        deadline = time.monotonic() + timeout
        t = schema.instances
        while True:
            # Read outside the condition (reports need it only to count a change), then
            # wait unless a change came in meanwhile: none is missed.
            with self._cond:
                seen = self._generation
            found = {r['uuid']: r for r in self._rows(t.c.uuid.in_(list(uuids)))}
            rows = {u: found.get(u) for u in uuids}
            if all(r is not None and r['vm_state'] in states
                   and (not ready or r['readiness'] == 'ready') for r in rows.values()):
                return rows
            left = deadline - time.monotonic()
            if left <= 0:
                return rows
            with self._cond:
                if self._generation == seen:
                    self._cond.wait(left if self._wait_poll is None
                                    else min(left, self._wait_poll))

    def close(self) -> None:
        """Close the database's connections."""
        self.engine.dispose()


def dumps(rows) -> str:
    return json.dumps(rows, indent=2, sort_keys=True)
