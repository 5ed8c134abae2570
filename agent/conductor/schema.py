"""The conductor's tables (SQLAlchemy Core): the latest state of every instance, the latest
usage of every node, and one row per report received.

Migrations (``agent/conductor/migrations``, alembic) create and change these tables; this
module is what the code reads and writes, and ``tests/unit/test_conductor_store.py`` checks
that the migrated schema and this one agree.
"""
import sqlalchemy as sa

metadata = sa.MetaData()

# Epoch seconds are Float (double precision on PostgreSQL); seq and generation are an
# agent's clock in ns (BigInteger).
instances = sa.Table(
    'instances', metadata,
    sa.Column('uuid', sa.String(36), primary_key=True),
    sa.Column('host', sa.String(255), nullable=False),
    sa.Column('name', sa.Text),
    sa.Column('vm_state', sa.String(32), nullable=False),
    sa.Column('power_state', sa.String(32)),
    sa.Column('task', sa.String(32)),
    sa.Column('fault', sa.Text),
    sa.Column('boot_job', sa.String(36)),
    sa.Column('accepted_at', sa.Float),
    sa.Column('active_at', sa.Float),
    sa.Column('updated_at', sa.Float),
    sa.Column('seq', sa.BigInteger, nullable=False),
    sa.Column('received_at', sa.Float, nullable=False),
    sa.Column('readiness', sa.String(16)),
    sa.Column('ready_at', sa.Float),
    sa.Column('active_seen_at', sa.Float),
    sa.Column('ready_seen_at', sa.Float),
    sa.Column('delete_job', sa.String(36)),      # 2.1
    sa.Column('power_job', sa.String(36)),       # 2.1
    sa.Column('domain', sa.String(255)),         # 2.1
    sa.Index('instances_host', 'host'),
)

reports = sa.Table(
    'reports', metadata,
    sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
    sa.Column('host', sa.String(255), nullable=False),
    sa.Column('received_at', sa.Float, nullable=False),
    sa.Column('states', sa.Integer, nullable=False),
    sa.Column('applied', sa.Integer, nullable=False),
    sa.Column('generation', sa.BigInteger),
    sa.Column('node_applied', sa.Integer),
    sa.Column('sent_at', sa.Float),          # the agent's clock when it sent the report (1.3)
    sa.Index('reports_host', 'host', 'id'),
)

nodes = sa.Table(
    'nodes', metadata,
    sa.Column('host', sa.String(255), primary_key=True),
    sa.Column('generation', sa.BigInteger, nullable=False),
    sa.Column('capacity', sa.Text, nullable=False),
    sa.Column('usage', sa.Text, nullable=False),
    sa.Column('inventory', sa.Text),
    sa.Column('instances', sa.Integer, nullable=False),
    sa.Column('reported_at', sa.Float),
    sa.Column('received_at', sa.Float, nullable=False),
    sa.Column('reserved', sa.Text),
)
