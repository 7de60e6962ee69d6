"""Model registry on PostgreSQL for loopml: ``[registry] backend = "postgres"``.

The same contract as the embedded SQLite registry, for teams whose Prefect workers and servers run
on many machines: versions numbered from 1 per model, compare-and-set aliases, append-only history.
The registry is loopml's one SQL registry (:mod:`loopml.backends.sql_registry`, SQLAlchemy Core,
one Alembic history for SQLite and PostgreSQL); this plugin adds the connection (psycopg 3) and the
locking.

Concurrency: ``register`` and every alias move run in one transaction holding a transaction-scoped
advisory lock on the model name (``pg_advisory_xact_lock``), so version numbers never collide and an
alias moves only if it still points where the caller expected. A trigger refuses UPDATE and DELETE
on ``history``. The same PostgreSQL can hold MLflow's tracking store and Prefect's database (each in
its own database); see docs/plugins.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from loopml.backends.sql_registry import SqlRegistry
from loopml.errors import ConfigError
from loopml.plugins import hookimpl
from loopml.specs import BackendSpec


class PostgresRegistryOptions(BaseModel):
    """``[registry] backend = "postgres"`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    url: SecretStr  # postgresql+psycopg://user:password@host:5432/loopml (a secret: it may hold a password)
    pool_size: int = 5
    connect_timeout: float = 10.0


MIGRATION_LOCK = 7319  # advisory lock key: one migrator at a time


class PostgresRegistry(SqlRegistry):
    """The registry over PostgreSQL: a write holds a transaction-scoped advisory lock on the model."""

    def __init__(self, url: str, *, pool_size: int = 5, connect_timeout: float = 10.0) -> None:
        from sqlalchemy import create_engine

        super().__init__(create_engine(url, pool_size=pool_size, pool_pre_ping=True,
                                       connect_args={"connect_timeout": int(connect_timeout)}))

    def _identity(self, conn: Any, claimed: str) -> str:
        """On PostgreSQL whoever acts on approvals is the database role, not what the client claims:
        give each approver a role of their own and the database itself separates duties."""
        return str(conn.exec_driver_sql("SELECT session_user").scalar_one())

    def _lock(self, conn: Any, name: str) -> None:
        if name:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtextextended(%(k)s, 0))", {"k": name})
        else:  # the schema
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")


def _factory(options: PostgresRegistryOptions, ctx: Any) -> PostgresRegistry:
    url = options.url.get_secret_value()
    if not url.startswith(("postgresql://", "postgresql+psycopg://")):
        raise ConfigError("registry.options.url must be a postgresql+psycopg://user:pass@host:port/db URL")
    return PostgresRegistry(url.replace("postgresql://", "postgresql+psycopg://", 1),
                            pool_size=options.pool_size, connect_timeout=options.connect_timeout)


@hookimpl
def loopml_registries() -> list[BackendSpec]:
    return [BackendSpec("postgres", _factory, PostgresRegistryOptions,
                        "model registry on PostgreSQL (SQLAlchemy + psycopg; Alembic migrations)",
                        requires=("psycopg",))]
