"""The pipeline with MLflow + W&B tracking and S3 storage at once, checked with each vendor's client;
a failing tracker does not fail training; canary secrets appear nowhere."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from servers import moto_server

from loopml.backends.sqlite_registry import SqliteRegistry
from loopml.examples import churn

pytestmark = pytest.mark.slow
CANARIES = {"aws": "CANARY-aws-4b1e9d", "wandb": "CANARY-wandb-77c2aa", "mlflow": "CANARY-mlflow-0f3e51",
            "env": "CANARY-env-5d8a02"}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


def project(folder: Path, endpoint: str, bucket: str, mlflow_uri: str | None = None) -> Path:
    churn.init_project(folder, n_customers=2000)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIATEST",
                 aws_secret_access_key="x").create_bucket(Bucket=bucket)
    example_storage = '[storage]\nuri = "artifacts"            # under home; or s3://bucket/prefix with the s3 plugin\n'
    config = (folder / "loopml.toml").read_text()
    assert example_storage in config
    config = config.replace(example_storage, "")  # replaced by the S3 table below
    mlflow_line = f'tracking_uri = "{mlflow_uri}"\n' if mlflow_uri else ""
    extra = (f'\n[storage]\nuri = "s3://{bucket}/loopml"\n[storage.options]\nendpoint_url = "{endpoint}"\n'
             f'region = "us-east-1"\naccess_key_id = "AKIATEST"\nsecret_access_key = "{CANARIES["aws"]}"\n'
             f'\n[trackers.mlflow]\n{mlflow_line}token = "{CANARIES["mlflow"]}"\n'
             f'\n[trackers.wandb]\nmode = "offline"\napi_key = "{CANARIES["wandb"]}"\n')
    (folder / "loopml.toml").write_text(config + extra)
    return folder / "loopml.toml"


def run_pipeline(config: Path, tmp: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "WANDB_API_KEY": CANARIES["env"],
           "AWS_SECRET_ACCESS_KEY": CANARIES["env"], "AWS_SESSION_TOKEN": CANARIES["env"], **env_extra}
    return subprocess.run([sys.executable, "-m", "loopml.cli", "run", "--no-deploy", "--config", str(config),
                           "--profile", "ci"], capture_output=True, text=True, timeout=600, env=env)


def test_pipeline_logs_to_mlflow_and_wandb_and_stores_in_s3(endpoint: str, tmp_path: Path,
                                                           prefect_api: dict[str, str]) -> None:
    from mlflow import MlflowClient

    from loopml_wandb import read_run_file

    config = project(tmp_path / "p", endpoint, "pipeline-bucket")
    result = run_pipeline(config, tmp_path, **prefect_api)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    home = tmp_path / "p" / ".loopml"
    model = SqliteRegistry(home / "registry.db").get("churn", alias="production")

    # S3, through boto3: the model artifact and the dataset versions are there, bytes hash right.
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIATEST",
                      aws_secret_access_key="x")
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="pipeline-bucket")
            for o in page.get("Contents", [])}
    assert f"loopml/refs/{model.artifact_key}.ref" in keys
    assert f"loopml/objects/{model.artifact_sha256[:2]}/{model.artifact_sha256}" in keys
    assert any(k.startswith("loopml/refs/datasets/activity/") for k in keys)
    assert not (home / "artifacts").exists()

    # MLflow, through MlflowClient: the run, its per-epoch metrics, tags and the model artifact.
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("churn").experiment_id],
                                f"tags.`loopml.run_id` = '{model.run_id}'")
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 10  # ci profile: 10 epochs
    assert run.data.tags["loopml.dataset.labels"] == model.dataset_version
    assert run.data.tags["loopml.git_commit"] == model.git_commit
    assert run.data.tags["loopml.registry_version"] == "churn:v1"
    assert run.data.params["epochs"] == "10"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"model", "model.pt2", "model_card.md", "validation_report.html"}  # model/: MLflow model
    card = client.download_artifacts(run.info.run_id, "model_card.md", str(tmp_path))
    assert "churn:v1 (approved)" in Path(card).read_text()

    # W&B, through its own run-file schema: the same run id, config and metric history.
    segments = sorted((home / "wandb").glob(f"offline-run-*-{model.run_id}*/run-{model.run_id}.wandb"))
    assert len(segments) == 2  # the training run, then the same run resumed to move the production alias
    assert {read_run_file(f)["run_id"] for f in (home / "wandb").glob("offline-run-*/run-*.wandb")} == {model.run_id}
    assert "production" in read_run_file(segments[-1])["artifact_records"][0]["aliases"]
    content = read_run_file(segments[0])
    assert content["config"]["epochs"] == "10" and len(content["history"]["train_loss"]) == 10
    assert content["exit_code"] == 0
    # Registration's card and report reached the training run before it finished.
    assert {a["type"] for a in content["artifact_records"]} == {"model", "model-card", "report"}
    assert "loopml.registry_version=churn:v1" in content["tags"]

    # Canary secrets: in no output, local file, tracker store or S3 object.
    haystacks = [result.stdout.encode(), result.stderr.encode()]
    for root in (home, tmp_path / "prefect"):
        haystacks += [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    haystacks += [s3.get_object(Bucket="pipeline-bucket", Key=k)["Body"].read() for k in keys]
    for name, canary in CANARIES.items():
        assert not any(canary.encode() in h for h in haystacks), f"{name} secret leaked"


def test_an_unreachable_tracker_is_reported_and_training_goes_on(endpoint: str, tmp_path: Path,
                                                                prefect_api: dict[str, str]) -> None:
    config = project(tmp_path / "p", endpoint, "unreachable-bucket", mlflow_uri="http://127.0.0.1:9")
    result = run_pipeline(config, tmp_path, **prefect_api, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
                          MLFLOW_HTTP_REQUEST_TIMEOUT="3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tracker 'mlflow' failed" in result.stdout + result.stderr
    assert SqliteRegistry(tmp_path / "p" / ".loopml" / "registry.db").aliases("churn") == {"production": 1}
