"""Alembic environment of the registry: loopml passes an open connection (see loopml.backends.sql_registry)."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, version_table="loopml_alembic_version",
                  render_as_batch=connection.dialect.name == "sqlite")
context.run_migrations()
