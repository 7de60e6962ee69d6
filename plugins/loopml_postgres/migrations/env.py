"""Alembic environment: loopml passes an open connection (see loopml_postgres.migrate)."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, version_table="loopml_alembic_version")
context.run_migrations()
