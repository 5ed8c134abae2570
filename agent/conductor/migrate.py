"""Brings the conductor's database to the current schema (alembic, ``migrations/``).

Every conductor worker calls ``upgrade`` at start-up; one at a time (a PostgreSQL advisory
lock, or a lock file next to a SQLite database), so N workers started at once migrate once.
A SQLite database made before the store moved to alembic (tables, no ``alembic_version``)
gains the columns it lacks and is stamped as revision 0001, its rows kept.
"""
import contextlib
import fcntl
import logging
import os

import sqlalchemy as sa
from alembic import command
from alembic import config as alembic_config
from alembic import migration
from alembic import script

LOG = logging.getLogger(__name__)

LOCK_KEY = 0x636f6e64          # pg_advisory_lock key: "cond"
BASELINE = '0001'
# Columns the hand-written SQLite schema gained after its first release: a database made by
# an older conductor may lack them. (table, column, SQLite declaration)
PRE_ALEMBIC_COLUMNS = (
    ('reports', 'generation', 'INTEGER'), ('reports', 'node_applied', 'INTEGER'),
    ('instances', 'readiness', 'TEXT'), ('instances', 'ready_at', 'REAL'),
    ('instances', 'active_seen_at', 'REAL'), ('instances', 'ready_seen_at', 'REAL'),
    ('nodes', 'reserved', 'TEXT'))


def _config(connection) -> alembic_config.Config:
    cfg = alembic_config.Config()
    cfg.set_main_option('script_location', 'agent.conductor:migrations')
    cfg.attributes['connection'] = connection
    return cfg


def head() -> str:
    """The newest revision this code knows."""
    return script.ScriptDirectory.from_config(_config(None)).get_current_head()


@contextlib.contextmanager
def _one_at_a_time(engine: sa.engine.Engine):
    if engine.dialect.name == 'postgresql':
        with engine.connect() as conn:
            conn.execute(sa.text('SELECT pg_advisory_lock(:k)'), {'k': LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sa.text('SELECT pg_advisory_unlock(:k)'), {'k': LOCK_KEY})
                conn.commit()
    elif engine.dialect.name == 'sqlite' and engine.url.database not in (None, '', ':memory:'):
        with open(os.path.abspath(engine.url.database) + '.migrate-lock', 'a') as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:
        yield


def _adopt_pre_alembic(conn) -> None:
    """A hand-made SQLite schema: add what it lacks, then mark it as the baseline."""
    inspector = sa.inspect(conn)
    for table, column, decl in PRE_ALEMBIC_COLUMNS:
        if column not in {c['name'] for c in inspector.get_columns(table)}:
            conn.exec_driver_sql('ALTER TABLE %s ADD COLUMN %s %s' % (table, column, decl))
    if 'reports_host' not in {i['name'] for i in inspector.get_indexes('reports')}:
        conn.exec_driver_sql('CREATE INDEX reports_host ON reports (host, id)')
    conn.commit()
    command.stamp(_config(conn), BASELINE)
    conn.commit()
    LOG.info('conductor database made before migrations: adopted as revision %s', BASELINE)


def upgrade(engine: sa.engine.Engine) -> str:
    """Migrate to the newest revision (one worker at a time); the revision."""
    with _one_at_a_time(engine):
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if 'instances' in tables and 'alembic_version' not in tables:
                _adopt_pre_alembic(conn)
            before = migration.MigrationContext.configure(conn).get_current_revision()
            command.upgrade(_config(conn), 'head')
            conn.commit()
            after = migration.MigrationContext.configure(conn).get_current_revision()
    if before != after:
        LOG.info('conductor database migrated from %s to %s', before, after)
    return after
