"""The durable job journal: one SQLite file (WAL) on the node, written with group commit.

Every job change is handed to ``put`` and lands in a pending set that keeps only the newest
row per job. One committer loop writes everything pending in one transaction on the global
work queue (SQLite blocks) and confirms it with one fsync, however many jobs and changes it
holds. A job row is inserted once and then updated in place; the spec is written with the
insert only. Callers that must not answer before their record is on disk (a boot or delete
request) ``wait`` for their ticket. A request whose wait fails ``withdraw``s its row: if the
row was still only pending it will never be written (the request is refused); otherwise the
outcome is unknown and the caller must say so.

Disk full: a reserve file (``[jobs] journal`` + ``.reserve``) keeps a few MiB for the journal.
When a commit fails because the disk is full, the reserve is released and the commit retried at
once, so deletes (which free space) can still be recorded; ``low_space`` stays set, and boots
are refused, until the filesystem has room for the reserve again.

Plain code: ``execute`` is the work queue's, the Condition is green under the agent.
"""
import json
import logging
import os
import sqlite3
import threading
import time
from typing import Callable

from agent import crashpoints

LOG = logging.getLogger(__name__)

COLUMNS = ('id', 'kind', 'uuid', 'state', 'reason', 'created_at', 'started_at', 'finished_at',
           'attempts', 'calls', 'spec', 'result')
_MUTABLE = ('state', 'reason', 'started_at', 'finished_at', 'attempts', 'calls', 'result')

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, uuid TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 1, calls TEXT, spec TEXT, result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_uuid ON jobs(uuid);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class JournalError(Exception):
    """A journal write failed or was not confirmed in time."""
    pass


def describe(exc: BaseException) -> str:
    """A commit error as an operator reads it ("disk full", not SQLite's follow-up errors)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError) and 'full' in text:
        return 'disk full (%s)' % text
    if isinstance(exc, OSError) and exc.errno == 28:
        return 'disk full (%s)' % text
    return text


class JobJournal:
    """The durable job journal: ``put`` rows, ``wait`` for their tickets; one committer loop
    (``run``) writes them in groups."""
    def __init__(self, path: str, execute: Callable, synchronous: str = 'FULL',
                 sleep: Callable[[float], None] = time.sleep, reserve_bytes: int = 8 << 20):
        os.makedirs(os.path.dirname(os.path.abspath(path)) or '.', exist_ok=True)
        self.path = path
        self.reserve_path = path + '.reserve'
        self._reserve_bytes = reserve_bytes
        self.low_space = False
        self._execute = execute
        self._sleep = sleep
        # Used by one committer at a time (on a work-queue thread) and by load() at start-up.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.execute('PRAGMA synchronous=%s' % synchronous)
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute('PRAGMA table_info(jobs)')}
        if 'result' not in columns:          # a journal written before jobs had a result
            self._db.execute('ALTER TABLE jobs ADD COLUMN result TEXT')
        self._cond = threading.Condition()
        self._pending: dict[str, dict] = {}
        self._meta: dict[str, int] = {}      # values written with the next commit
        self._writing: set[str] = set()      # job ids of the commit under way
        self._withdrawn = False              # tickets to settle with no row to write
        self._prune_before: float | None = None
        self._queued = 0          # tickets handed out
        self._committed = 0       # every ticket up to this one is on disk
        self._failed: BaseException | None = None
        self._stopped = False
        self.commits = 0
        self.rows_written = 0
        self.puts = 0
        self.pruned = 0
        self.reserve_released = 0
        self._make_reserve()

    # -- the disk reserve -----------------------------------------------------------------------
    def _make_reserve(self) -> bool:
        """Create the reserve file if it is missing and the disk has room for it and more."""
        if not self._reserve_bytes or os.path.exists(self.reserve_path):
            return True
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
            if st.f_bavail * st.f_frsize < 4 * self._reserve_bytes:
                return False
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, self._reserve_bytes)
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            LOG.warning('job journal reserve %s not made: %s', self.reserve_path, exc)
            try:
                os.unlink(self.reserve_path)
            except OSError:
                pass
            return False

    def _release_reserve(self) -> bool:
        try:
            os.unlink(self.reserve_path)
        except FileNotFoundError:
            return False
        self.reserve_released += 1
        LOG.error('job journal %s: disk full; released its %d MiB reserve so that deletes '
                  'can still be recorded; boots are refused until there is room again',
                  self.path, self._reserve_bytes >> 20)
        return True

    def room_again(self) -> bool:
        """While low on space: try to remake the reserve now (on the work queue), so a node
        whose disk was cleaned up accepts boots again without waiting for a commit. True when
        the journal has its reserve."""
        if self.low_space and self._execute('journal.reserve', self._make_reserve):
            self.low_space = False
            LOG.warning('job journal %s: room again; reserve restored, boots accepted', self.path)
        return not self.low_space

    # -- writes ---------------------------------------------------------------------------------
    def put(self, row: dict) -> int:
        """Queue the newest version of one job row; returns a ticket for ``wait``."""
        with self._cond:
            self.puts += 1
            self._pending[row['id']] = row
            self._queued += 1
            self._cond.notify_all()
            return self._queued

    def get_meta(self, key: str, default: int = 0) -> int:
        """A value of the journal's ``meta`` table (start-up, before the committer runs)."""
        row = self._db.execute('SELECT value FROM meta WHERE key = ?', (key,)).fetchone()
        return default if row is None else int(row[0])

    def set_meta_now(self, key: str, value: int) -> None:
        """Write and fsync a ``meta`` value at once (start-up, before the committer runs)."""
        self._db.execute('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO '
                         'UPDATE SET value = excluded.value', (key, value))

    def set_meta(self, key: str, value: int) -> None:
        """Write a ``meta`` value with the next group commit."""
        with self._cond:
            self._meta[key] = value
            self._queued += 1
            self._cond.notify_all()

    def prune(self, before: float) -> None:
        """Remove finished jobs that finished before ``before`` at the next commit."""
        with self._cond:
            self._prune_before = before
            self._queued += 1
            self._cond.notify_all()

    def withdraw(self, job_id: str) -> bool:
        """Take back a job's row that ``wait`` gave up on. True: it was only pending and will
        never be written. False: a commit that holds it is under way or done (its outcome is
        unknown to the caller)."""
        with self._cond:
            if job_id in self._pending and job_id not in self._writing:
                del self._pending[job_id]
                self._withdrawn = True       # its ticket is settled by the next pass
                self._cond.notify_all()
                return True
            return False

    def wait_landed(self, ticket: int) -> None:
        """Block, however long it takes, until the change behind ``ticket`` is on disk (or
        the journal stops)."""
        with self._cond:
            while self._committed < ticket and not self._stopped:
                self._cond.wait(1.0)

    def wait(self, ticket: int, timeout: float = 30.0) -> None:
        """Block until the change behind ``ticket`` is on disk."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._committed < ticket:
                if self._failed is not None:
                    raise JournalError('job journal %s: %s' % (self.path, describe(self._failed)))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise JournalError('job journal %s: no commit within %.0f s'
                                       % (self.path, timeout))
                self._cond.wait(left)

    def run(self) -> None:
        """The committer loop; run it in its own (green)thread."""
        while True:
            with self._cond:
                while not self._pending and self._prune_before is None and not self._meta \
                        and not self._withdrawn and not self._stopped:
                    self._cond.wait()
                if self._stopped:       # flush() first for a clean stop
                    return
                batch, self._pending = self._pending, {}
                meta, self._meta = self._meta, {}
                prune, self._prune_before = self._prune_before, None
                upto = self._queued
                self._writing = set(batch)
                self._withdrawn = False
                if not batch and prune is None and not meta:
                    # Only withdrawn rows: nothing to write, their tickets are settled.
                    self._writing = set()
                    self._committed = max(self._committed, upto)
                    self._cond.notify_all()
                    continue
            try:
                self._execute('journal.commit', self._write, list(batch.values()), prune, meta)
            except Exception as exc:   # disk full, I/O error: waiters get it, writes retry
                if not self._commit_failed(exc, batch, meta):
                    self._sleep(0.5)
                continue
            if self.low_space and self._make_reserve():
                self.low_space = False
                LOG.warning('job journal %s: room again; reserve restored, boots accepted',
                            self.path)
            with self._cond:
                self._writing = set()
                self._failed = None
                self._committed = max(self._committed, upto)
                self.commits += 1
                self.rows_written += len(batch)
                self._cond.notify_all()

    def _commit_failed(self, exc: Exception, batch: dict, meta: dict) -> bool:
        """Put a failed commit's changes back for the next one. True: retry at once (the
        disk was full and the reserve was given back for it); else waiters get the error."""
        LOG.error('job journal commit failed: %s', describe(exc))
        retry_now = False
        if describe(exc).startswith('disk full'):
            self.low_space = True
            retry_now = self._release_reserve()    # room for this very commit
        with self._cond:
            self._writing = set()
            for job_id, row in batch.items():
                self._pending.setdefault(job_id, row)
            for key, value in meta.items():
                self._meta[key] = max(value, self._meta.get(key, value))
            if not retry_now:
                self._failed = exc
                self._cond.notify_all()
        return retry_now

    def _write(self, rows: list[dict], prune: float | None, meta: dict | None = None) -> None:
        cur = self._db.cursor()
        cur.execute('BEGIN IMMEDIATE')
        try:
            for key, value in (meta or {}).items():
                cur.execute('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO '
                            'UPDATE SET value = max(value, excluded.value)', (key, value))
            for row in rows:
                values = {c: row.get(c) for c in COLUMNS}
                values['calls'] = json.dumps(row.get('calls') or {})
                values['spec'] = json.dumps(row['spec']) if row.get('spec') is not None else None
                values['attempts'] = row.get('attempts') or 1
                cur.execute(
                    'INSERT INTO jobs (%s) VALUES (%s) ON CONFLICT(id) DO UPDATE SET %s'
                    % (', '.join(COLUMNS), ', '.join(':' + c for c in COLUMNS),
                       ', '.join('%s=excluded.%s' % (c, c) for c in _MUTABLE)), values)
            if prune is not None:
                cur.execute('DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?',
                            (prune,))
                self.pruned += cur.rowcount
            uuids = [row.get('uuid') for row in rows]
            crashpoints.reached('journal.commit.before', *uuids)
            cur.execute('COMMIT')      # WAL + synchronous=FULL: one fsync for the whole batch
            crashpoints.reached('journal.commit.after', *uuids)
        except BaseException:
            # A failed COMMIT may have rolled back already: a second ROLLBACK would then
            # raise "no transaction is active" and hide the real error (disk full).
            if self._db.in_transaction:
                try:
                    cur.execute('ROLLBACK')
                except sqlite3.Error:
                    LOG.debug('rollback failed', exc_info=True)
            raise

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything put so far is on disk (JournalError after ``timeout``)."""
        with self._cond:
            ticket = self._queued
        self.wait(ticket, timeout)

    def stop(self) -> None:
        """Stop the committer; what is still pending is not written."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # -- reads ----------------------------------------------------------------------------------
    def load(self) -> list[dict]:
        """Every job row, oldest first (start-up, before the committer runs)."""
        cur = self._db.execute('SELECT %s FROM jobs ORDER BY created_at' % ', '.join(COLUMNS))
        out = []
        for values in cur.fetchall():
            row = dict(zip(COLUMNS, values))
            row['calls'] = json.loads(row['calls'] or '{}')
            row['spec'] = json.loads(row['spec']) if row['spec'] else None
            out.append(row)
        return out

    def close(self) -> None:
        """Close the database (after ``stop``)."""
        self._db.close()

    def stats(self) -> dict:
        """Counters: puts, commits, rows written, pruned, pending, low-space state."""
        return {'path': self.path, 'puts': self.puts, 'commits': self.commits,
                'rows_written': self.rows_written, 'pruned': self.pruned,
                'pending': len(self._pending), 'low_space': self.low_space,
                'reserve_released': self.reserve_released}
