"""The registry's schema: its Alembic history (``registry_migrations``), the revision a database is
at, the upgrade (SQLite and PostgreSQL alike), and :func:`reachable`, which every registry call
goes through (a database that is down or a schema to upgrade becomes one typed error)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopml.errors import RegistrySchemaError, RegistryUnavailableError

MIGRATIONS = Path(__file__).parent / "registry_migrations"
REVISIONS = ("0001", "0002", "0003")  # the migrations in registry_migrations/versions, in order
HEAD = REVISIONS[-1]
VERSION_TABLE = "loopml_alembic_version"


def schema_revision(conn: Any) -> str | None:
    """The registry schema's Alembic revision (None: no version table)."""
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def upgrade_schema(conn: Any) -> None:
    """Run Alembic to the latest revision on ``conn`` (in the caller's transaction). A registry made
    before migrations (its tables exist, no version table) is stamped at the revision it matches."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    if schema_revision(conn) is None and inspect(conn).has_table("versions"):
        command.stamp(config, "0001")
        conn.execute(text("CREATE INDEX IF NOT EXISTS history_by_name ON history (name, id)"))
    command.upgrade(config, "head")


def newer(revision: str | None) -> bool:
    """A revision this loopml does not know: written by a newer loopml."""
    return revision is not None and revision not in REVISIONS


def newer_text(revision: str | None) -> str:
    return (f"the registry schema is at revision {revision}, newer than this loopml knows ({HEAD}): upgrade "
            "loopml on this machine, not the registry")


def reachable(method: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the database being unreachable into one typed error that says so, naming the database
    (password hidden) and the driver's first line, instead of a driver traceback; and refuse to
    read or write a schema this loopml does not know."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import DBAPIError, OperationalError

        if self.schema_problem:
            raise RegistrySchemaError(self.schema_problem)
        try:
            return method(self, *args, **kwargs)
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not isinstance(exc, OperationalError) and \
                    not exc.connection_invalidated:
                raise
            first = str(exc.orig or exc).strip().splitlines()[0][:300] if str(exc.orig or exc).strip() else ""
            where = self.engine.url.render_as_string(hide_password=True)
            raise RegistryUnavailableError(f"the registry database is unreachable ({where}): {first}; "
                                           "nothing was changed, retry when it is back") from None

    return call
