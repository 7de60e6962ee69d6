"""The registry's tables: versions, aliases, append-only history (SQLite and PostgreSQL alike)."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

APPEND_ONLY = "registry history is append-only"


def upgrade() -> None:
    op.create_table(
        "versions",
        sa.Column("name", sa.Text, nullable=False), sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False), sa.Column("artifact_key", sa.Text, nullable=False),
        sa.Column("artifact_sha256", sa.Text, nullable=False), sa.Column("dataset_version", sa.Text),
        sa.Column("git_commit", sa.Text), sa.Column("run_id", sa.Text),
        sa.Column("params", sa.Text, nullable=False), sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("environment", sa.Text, nullable=False), sa.Column("lineage", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False), sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("name", "version"))
    op.create_table(
        "aliases",
        sa.Column("name", sa.Text, nullable=False), sa.Column("alias", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False), sa.Column("updated_at", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("name", "alias"),
        sa.ForeignKeyConstraint(["name", "version"], ["versions.name", "versions.version"]))
    op.create_table(
        "history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False), sa.Column("action", sa.Text, nullable=False),
        sa.Column("alias", sa.Text), sa.Column("from_version", sa.Integer), sa.Column("to_version", sa.Integer),
        sa.Column("actor", sa.Text, nullable=False), sa.Column("reason", sa.Text, nullable=False),
        sa.Column("evidence_sha256", sa.Text), sa.Column("at", sa.Text, nullable=False),
        sqlite_autoincrement=True)
    op.create_index("history_by_name", "history", ["name", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""CREATE FUNCTION loopml_history_is_append_only() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END; $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER history_no_update BEFORE UPDATE OR DELETE ON history
            FOR EACH ROW EXECUTE FUNCTION loopml_history_is_append_only()""")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER history_no_{event.lower()} BEFORE {event} ON history "
                       f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END")


def downgrade() -> None:
    op.drop_table("aliases")
    op.drop_table("history")
    op.drop_table("versions")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION loopml_history_is_append_only()")
