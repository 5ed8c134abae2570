"""Conductor API 2.1: a report says of each instance its delete and power jobs and its
domain's name (they were sent and dropped before).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('instances', sa.Column('delete_job', sa.String(36)))
    op.add_column('instances', sa.Column('power_job', sa.String(36)))
    op.add_column('instances', sa.Column('domain', sa.String(255)))


def downgrade() -> None:
    with op.batch_alter_table('instances') as batch:
        batch.drop_column('domain')
        batch.drop_column('power_job')
        batch.drop_column('delete_job')
