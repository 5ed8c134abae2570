"""Conductor API 1.3: a report carries when its agent sent it (reports.sent_at), so the time
from an agent to the conductor's row splits into the agent's part and the transport's.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('reports', sa.Column('sent_at', sa.Float))


def downgrade() -> None:
    with op.batch_alter_table('reports') as batch:
        batch.drop_column('sent_at')
