"""Alembic environment of the conductor's store: run programmatically by
``agent.conductor.migrate`` on the connection it passes (``config.attributes['connection']``)."""
from alembic import context

from agent.conductor import schema

connection = context.config.attributes['connection']
context.configure(connection=connection, target_metadata=schema.metadata,
                  render_as_batch=connection.dialect.name == 'sqlite')
with context.begin_transaction():
    context.run_migrations()
