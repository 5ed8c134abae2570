"""The schema of conductor API 1.2: instances (with readiness and first-seen times), reports,
nodes (with reserved capacity).

Revision ID: 0001
Revises: none
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'instances',
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
        sa.Column('ready_seen_at', sa.Float))
    op.create_index('instances_host', 'instances', ['host'])
    op.create_table(
        'reports',
        sa.Column('id', sa.Integer, primary_key=True, autoincrement=True),
        sa.Column('host', sa.String(255), nullable=False),
        sa.Column('received_at', sa.Float, nullable=False),
        sa.Column('states', sa.Integer, nullable=False),
        sa.Column('applied', sa.Integer, nullable=False),
        sa.Column('generation', sa.BigInteger),
        sa.Column('node_applied', sa.Integer))
    op.create_index('reports_host', 'reports', ['host', 'id'])
    op.create_table(
        'nodes',
        sa.Column('host', sa.String(255), primary_key=True),
        sa.Column('generation', sa.BigInteger, nullable=False),
        sa.Column('capacity', sa.Text, nullable=False),
        sa.Column('usage', sa.Text, nullable=False),
        sa.Column('inventory', sa.Text),
        sa.Column('instances', sa.Integer, nullable=False),
        sa.Column('reported_at', sa.Float),
        sa.Column('received_at', sa.Float, nullable=False),
        sa.Column('reserved', sa.Text))


def downgrade() -> None:
    op.drop_table('nodes')
    op.drop_table('reports')
    op.drop_table('instances')
