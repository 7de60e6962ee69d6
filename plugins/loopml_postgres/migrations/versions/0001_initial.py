"""The registry's tables: versions, aliases, append-only history."""

from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE versions (
        name TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
        artifact_key TEXT NOT NULL, artifact_sha256 TEXT NOT NULL,
        dataset_version TEXT, git_commit TEXT, run_id TEXT,
        params TEXT NOT NULL, metrics TEXT NOT NULL, environment TEXT NOT NULL, lineage TEXT NOT NULL,
        description TEXT NOT NULL, created_at TEXT NOT NULL, created_by TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE aliases (
        name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL,
        PRIMARY KEY (name, alias),
        FOREIGN KEY (name, version) REFERENCES versions(name, version)
    );
    CREATE TABLE history (
        id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, action TEXT NOT NULL, alias TEXT,
        from_version INTEGER, to_version INTEGER, actor TEXT NOT NULL, reason TEXT NOT NULL,
        evidence_sha256 TEXT, at TEXT NOT NULL
    );
    CREATE INDEX history_by_name ON history (name, id);
    CREATE FUNCTION loopml_history_is_append_only() RETURNS trigger AS $$
    BEGIN RAISE EXCEPTION 'registry history is append-only'; END; $$ LANGUAGE plpgsql;
    CREATE TRIGGER history_no_update BEFORE UPDATE OR DELETE ON history
        FOR EACH ROW EXECUTE FUNCTION loopml_history_is_append_only();
    """)


def downgrade() -> None:
    op.execute("DROP TABLE aliases; DROP TABLE history; DROP TABLE versions; "
               "DROP FUNCTION loopml_history_is_append_only();")
