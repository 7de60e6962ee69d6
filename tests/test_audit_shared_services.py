"""The audit commands on shared services, as a team runs them: the registry on PostgreSQL (each
person a database role), artifacts and datasets on S3 (moto_server).

One story: the pipeline (role ``postgres``) trains v1 under an approval policy and stops at
"awaiting approval"; the same role cannot approve it, the reviewer's role does and production
moves; corrected labels give v2; the impact query on the first labels version finds v1 live; v1 is
rebuilt bit for bit from its record; its evidence bundle carries the approval and checks out."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from loop_steps import loop_once
from servers import moto_server, postgres_server
from test_plugin_postgres import fresh_database

from loopml.context import Workspace
from loopml.examples import churn

pytestmark = pytest.mark.slow
BUCKET = "audit"


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=folder, check=True,
                   capture_output=True)


def project(folder: Path, endpoint: str, database: str) -> Path:
    config = churn.init_project(folder, n_customers=500)
    text = re.sub(r'\[storage\]\nuri = "artifacts"[^\n]*\n', "", config.read_text())
    text += (f'\n[storage]\nuri = "s3://{BUCKET}/loopml"\n[storage.options]\nendpoint_url = "{endpoint}"\n'
             'region = "us-east-1"\naccess_key_id = "AKIATEST"\nsecret_access_key = "x"\n'
             f'\n[registry]\nbackend = "postgres"\n[registry.options]\nurl = "{database}"\n'
             '\n[approvals]\nproduction = 1\n')
    config.write_text(text)
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "the project")
    return config


def loopml(config: Path, *args: str, database: str | None = None) -> subprocess.CompletedProcess:
    """The CLI as a person runs it; ``database``: connect to the registry as another role."""
    env_config = config
    if database is not None:  # the reviewer's own loopml.toml: the same project, their own role
        env_config = config.with_name("reviewer.toml")
        text = config.read_text()
        env_config.write_text(re.sub(r'url = "postgresql[^"]*"', f'url = "{database}"', text))
    return subprocess.run([sys.executable, "-m", "loopml.cli", *args, "--config", str(env_config)],
                          cwd=config.parent, capture_output=True, text=True, timeout=600)


def test_approval_impact_reproduction_and_evidence_on_postgres_and_s3(tmp_path, monkeypatch) -> None:
    with moto_server(tmp_path) as endpoint, postgres_server() as server:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIATEST",
                     aws_secret_access_key="x").create_bucket(Bucket=BUCKET)
        database = fresh_database(server)
        config = project(tmp_path / "p", endpoint, database)
        monkeypatch.chdir(config.parent)
        first = loop_once(config)
        ws = Workspace.open(config)
        assert first.status == "approved" and ws.registry.aliases("churn") == {}  # awaiting approval
        [request] = ws.registry.promotion_requests("churn")
        assert request.requested_by == "postgres"  # the database role, not what the client claimed

        refused = loopml(config, "models", "approve", str(request.id))
        assert refused.returncode != 0 and "postgres requested this promotion" in refused.stderr, refused.stderr
        with ws.registry.engine.connect() as conn:  # the reviewer gets a role of their own
            conn.exec_driver_sql("CREATE ROLE reviewer LOGIN")
            conn.exec_driver_sql("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO reviewer")
            conn.exec_driver_sql("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO reviewer")
            conn.commit()
        reviewer = database.replace("postgres@", "reviewer@", 1)
        approved = loopml(config, "models", "approve", str(request.id), "--json", database=reviewer)
        assert approved.returncode == 0, approved.stderr
        decided = json.loads(approved.stdout)
        assert decided["request"]["state"] == "promoted" and decided["request"]["decisions"][0]["actor"] == "reviewer"
        assert ws.registry.aliases("churn") == {"production": first.version}

        labels = config.parent / "data" / "labels.csv"
        rows = labels.read_text().splitlines()
        labels.write_text("\n".join(rows[:-40]) + "\n")  # corrected labels: a new dataset version
        second = loop_once(config)
        assert second.version == first.version + 1
        impact = loopml(config, "lineage", first.lineage["datasets"]["labels"], "--impact", "--json")
        assert impact.returncode == 0, impact.stderr
        found = json.loads(impact.stdout)
        assert [m["ref"] for m in found["models"]] == [first.ref] and found["models"][0]["live"]
        shared = json.loads(loopml(config, "lineage", first.lineage["datasets"]["features"], "--impact",
                                   "--json").stdout)
        assert {m["ref"] for m in shared["models"]} == {first.ref, second.ref}

        rebuilt = loopml(config, "reproduce", f"churn:{first.version}", "--json")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert json.loads(rebuilt.stdout)["outcome"] == "identical"

        out = tmp_path / "evidence"
        written = loopml(config, "models", "evidence", f"churn:{first.version}", str(out), "--no-reproduce")
        assert written.returncode == 0, written.stderr
        bundled = json.loads((out / "approvals.json").read_text())
        assert bundled["requests"][0]["decisions"][0]["actor"] == "reviewer"
        checked = subprocess.run([sys.executable, "-m", "loopml.cli", "models", "verify-evidence", str(out)],
                                 capture_output=True, text=True, timeout=120)
        assert checked.returncode == 0, checked.stdout + checked.stderr
