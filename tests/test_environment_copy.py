"""Promotion across environments: a version judged in staging (SQLite, local store) is copied into
production (PostgreSQL, S3 on moto_server), verified by sha256, judged there by production's own
gates, released there, and a second copy changes nothing."""

from __future__ import annotations

import hashlib
import json

import boto3
import pytest
from loop_steps import loop_once
from servers import moto_server, postgres_server
from test_plugin_postgres import fresh_database

from loopml.cli import main
from loopml.context import Workspace
from loopml.examples import churn

pytestmark = pytest.mark.slow


def test_a_staging_version_is_copied_judged_and_released_in_production(tmp_path, monkeypatch, capsys) -> None:
    with moto_server(tmp_path) as endpoint, postgres_server() as server:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIATEST",
                     aws_secret_access_key="x").create_bucket(Bucket="prod")
        folder = tmp_path / "p"
        config = churn.init_project(folder, n_customers=500)
        config.write_text(config.read_text() + (
            f'\n[profiles.prod.storage]\nuri = "s3://prod/loopml"\n[profiles.prod.storage.options]\n'
            f'endpoint_url = "{endpoint}"\nregion = "us-east-1"\naccess_key_id = "AKIATEST"\nsecret_access_key = "x"\n'
            f'[profiles.prod.registry]\nbackend = "postgres"\n[profiles.prod.registry.options]\n'
            f'url = "{fresh_database(server)}"\n[profiles.prod.pipeline.gates]\nthresholds = {{ auc = 0.72 }}\n'))
        monkeypatch.chdir(folder)
        staged = loop_once(config)  # staging: the embedded defaults
        assert staged.status == "approved"

        assert main(["models", "copy", f"churn:{staged.version}", "--to", "prod", "--promote", "--json"]) == 0
        copied = json.loads(capsys.readouterr().out)
        assert copied["created"] and copied["status"] == "approved" and copied["move"]["alias"] == "production"
        prod = Workspace.open(config, profile="prod")
        model = prod.registry.get("churn", alias="production")
        assert model.artifact_sha256 == staged.artifact_sha256
        assert hashlib.sha256(prod.store.get(model.artifact_key)).hexdigest() == staged.artifact_sha256  # on S3
        assert model.lineage["copied_from"]["ref"] == staged.ref
        assert prod.store.exists(copied["report"]) and copied["report"] != staged.lineage["validation_report"]
        assert "minimum 0.72" in prod.store.get(copied["report"]).decode()  # production's gate, not staging's 0.70
        history = [e.action for e in prod.registry.history("churn")]
        assert history == ["register", "status", "promote"]

        assert main(["models", "copy", f"churn:{staged.version}", "--to", "prod", "--json"]) == 0
        again = json.loads(capsys.readouterr().out)
        assert not again["created"] and again["target"] == model.ref  # idempotent
        assert [e.action for e in prod.registry.history("churn")] == history
