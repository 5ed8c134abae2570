"""The conductor's store: the latest state of every instance and the latest usage of every
node, in SQLite.

An instance row is applied only if its ``seq`` is newer than the stored one, and a node's usage
only if its ``generation`` is higher, so reports that arrive late or twice never roll back.
An instance belongs to the node that first reported it: another node's state for it is not
applied (unless the instance was deleted). Reports are checked (``validate``) before they get
here; a report that still fails to apply is rolled back whole and the store stays usable.
"""
import json
import sqlite3
import threading
import time

FIELDS = ('uuid', 'host', 'name', 'vm_state', 'power_state', 'task', 'fault', 'boot_job',
          'accepted_at', 'active_at', 'updated_at', 'seq', 'readiness', 'ready_at')
# When the conductor first stored the current active_at / ready_at (a report's lag is
# ``*_seen_at - *_at``): kept while a later report repeats the same time.
SEEN = (('active_seen_at', 'active_at'), ('ready_seen_at', 'ready_at'))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    uuid TEXT PRIMARY KEY, host TEXT NOT NULL, name TEXT, vm_state TEXT NOT NULL,
    power_state TEXT, task TEXT, fault TEXT, boot_job TEXT, accepted_at REAL, active_at REAL,
    updated_at REAL, seq INTEGER NOT NULL, received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_host ON instances(host);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL, received_at REAL NOT NULL,
    states INTEGER NOT NULL, applied INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    host TEXT PRIMARY KEY, generation INTEGER NOT NULL, capacity TEXT NOT NULL,
    usage TEXT NOT NULL, inventory TEXT, instances INTEGER NOT NULL, reported_at REAL,
    received_at REAL NOT NULL
);
"""

# Columns added after the first release: (table, column, declaration).
_ADDED_COLUMNS = (('reports', 'generation', 'INTEGER'), ('reports', 'node_applied', 'INTEGER'),
                  ('instances', 'readiness', 'TEXT'), ('instances', 'ready_at', 'REAL'),
                  ('instances', 'active_seen_at', 'REAL'), ('instances', 'ready_seen_at', 'REAL'),
                  ('nodes', 'reserved', 'TEXT'))


class InstanceStore:
    """Thread-safe; every change wakes ``wait_for`` callers."""

    def __init__(self, path: str):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute('PRAGMA synchronous=NORMAL')
        self._db.executescript(_SCHEMA)
        for table, column, decl in _ADDED_COLUMNS:
            have = {row[1] for row in self._db.execute('PRAGMA table_info(%s)' % table)}
            if column not in have:
                self._db.execute('ALTER TABLE %s ADD COLUMN %s %s' % (table, column, decl))
        self._cond = threading.Condition()

    def apply_report(self, host: str, states: list[dict], resources: dict | None = None) -> int:
        """Store the newer of each state, and the node's usage if its generation is higher;
        one transaction per report, rolled back whole if any part fails. Returns the
        instance rows applied."""
        with self._cond:
            cur = self._db.cursor()
            cur.execute('BEGIN')
            try:
                applied = self._apply(cur, host, states, resources)
                cur.execute('COMMIT')
            except BaseException:
                if self._db.in_transaction:
                    cur.execute('ROLLBACK')
                raise
            self._cond.notify_all()
        return applied

    def _apply(self, cur, host: str, states: list[dict], resources: dict | None) -> int:
        now = time.time()
        applied = 0
        node_applied = None
        for state in states:
            row = {f: state.get(f) for f in FIELDS}
            row['host'] = host
            row['received_at'] = now
            seen_new = ', '.join('CASE WHEN :%s IS NULL THEN NULL ELSE :received_at END' % at
                                 for _, at in SEEN)
            seen_set = ', '.join(
                '%s=CASE WHEN excluded.%s IS NULL THEN NULL WHEN excluded.%s IS instances.%s '
                'THEN instances.%s ELSE excluded.received_at END' % (seen, at, at, at, seen)
                for seen, at in SEEN)
            cur.execute(
                'INSERT INTO instances (%s, received_at, %s) VALUES (%s, :received_at, %s) '
                'ON CONFLICT(uuid) DO UPDATE SET %s, %s WHERE excluded.seq > instances.seq '
                "AND (instances.host = excluded.host OR instances.vm_state = 'deleted')"
                % (', '.join(FIELDS), ', '.join(seen for seen, _ in SEEN),
                   ', '.join(':' + f for f in FIELDS), seen_new,
                   ', '.join('%s=excluded.%s' % (f, f) for f in FIELDS[1:] + ('received_at',)),
                   seen_set),
                row)
            applied += cur.rowcount
        if resources is not None:
            cur.execute(
                'INSERT INTO nodes (host, generation, capacity, usage, inventory, instances, '
                'reported_at, received_at, reserved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) '
                'ON CONFLICT(host) DO UPDATE SET generation=excluded.generation, '
                'capacity=excluded.capacity, usage=excluded.usage, reserved=excluded.reserved, '
                'inventory=excluded.inventory, instances=excluded.instances, '
                'reported_at=excluded.reported_at, received_at=excluded.received_at '
                'WHERE excluded.generation > nodes.generation',
                (host, int(resources['generation']), json.dumps(resources['capacity']),
                 json.dumps(resources['usage']), json.dumps(resources.get('inventory')),
                 int(resources['instances']), resources.get('at'), now,
                 json.dumps(resources.get('reserved'))))
            node_applied = cur.rowcount
        cur.execute('INSERT INTO reports (host, received_at, states, applied, generation, '
                    'node_applied) VALUES (?, ?, ?, ?, ?, ?)',
                    (host, now, len(states), applied,
                     None if resources is None else int(resources['generation']),
                     node_applied))
        return applied

    def _rows(self, where: str = '', args=()) -> list[dict]:
        # received_at: when the conductor got the current state.
        columns = FIELDS + ('received_at',) + tuple(seen for seen, _ in SEEN)
        cur = self._db.execute('SELECT %s FROM instances %s ORDER BY accepted_at'
                               % (', '.join(columns), where), args)
        return [dict(zip(columns, row)) for row in cur.fetchall()]

    def get(self, uuid: str) -> dict | None:
        """One instance's row, or None."""
        with self._cond:
            rows = self._rows('WHERE uuid = ?', (uuid,))
        return rows[0] if rows else None

    def list_instances(self, host: str | None = None) -> list[dict]:
        """Every instance row, or those of one host."""
        with self._cond:
            return self._rows('WHERE host = ?', (host,)) if host else self._rows()

    def report_count(self, host: str | None = None) -> int:
        """The number of reports applied (from one host, or all)."""
        with self._cond:
            q = 'SELECT COUNT(*) FROM reports' + (' WHERE host = ?' if host else '')
            return self._db.execute(q, (host,) if host else ()).fetchone()[0]

    def get_node(self, host: str) -> dict | None:
        """A node's last applied usage report, or None."""
        with self._cond:
            row = self._db.execute(
                'SELECT host, generation, capacity, usage, inventory, instances, reported_at, '
                'received_at, reserved FROM nodes WHERE host = ?', (host,)).fetchone()
        if row is None:
            return None
        return {'host': row[0], 'generation': row[1], 'capacity': json.loads(row[2]),
                'usage': json.loads(row[3]), 'inventory': json.loads(row[4] or 'null'),
                'instances': row[5], 'reported_at': row[6], 'received_at': row[7],
                'reserved': json.loads(row[8] or 'null')}

    def list_reports(self, host: str) -> list[dict]:
        """Every report received from ``host``, oldest first."""
        with self._cond:
            rows = self._db.execute(
                'SELECT received_at, states, applied, generation, node_applied FROM reports '
                'WHERE host = ? ORDER BY id', (host,)).fetchall()
        return [dict(zip(('received_at', 'states', 'applied', 'generation', 'node_applied'), r))
                for r in rows]

    def wait_for(self, uuids: list[str], states: list[str], timeout: float,
                 ready: bool = False) -> dict:
        """Block until every uuid is in one of ``states`` (and, with ``ready``, its guest is
        ready), or until ``timeout``. Returns {uuid: row or None}."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                rows = {u: (self._rows('WHERE uuid = ?', (u,)) or [None])[0] for u in uuids}
                if all(r is not None and r['vm_state'] in states
                       and (not ready or r['readiness'] == 'ready') for r in rows.values()):
                    return rows
                left = deadline - time.monotonic()
                if left <= 0:
                    return rows
                self._cond.wait(left)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def dumps(rows) -> str:
    return json.dumps(rows, indent=2, sort_keys=True)
