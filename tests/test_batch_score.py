"""Batch scoring: partitioned, point-in-time features, the same result for any number of partitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from loop_steps import train_and_validate

from loopml import batch
from loopml.artifacts import Predictor
from loopml.context import Workspace
from loopml.errors import DataValidationError
from loopml.examples import churn
from loopml.stages.release import register_and_promote

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A project with a production model and a dataset of customers to score as of a date."""
    folder = tmp_path_factory.mktemp("batch")
    churn.init_project(folder, n_customers=600, seed=4)
    config = folder / "loopml.toml"
    ws = Workspace.open(config, profile="ci")
    candidate, evaluation, key, baseline = train_and_validate(ws)
    register_and_promote(ws, candidate, evaluation.report, key, baseline)
    labels = pd.read_csv(folder / "data" / "labels.csv")
    to_score = labels[["customer_id"]].head(250).assign(as_of=labels["label_timestamp"].head(250))
    to_score.to_csv(folder / "to_score.csv", index=False)
    ws.datasets.ingest("to-score", folder / "to_score.csv")
    yield config, "to-score@latest"


def test_the_result_is_the_same_for_one_partition_and_many(scored_project, monkeypatch) -> None:
    config, dataset = scored_project
    monkeypatch.setattr(batch, "BLOCK", 32)  # 250 rows: 8 blocks, so 7 partitions really split them
    ws = Workspace.open(config, profile="ci")
    rows = batch.scoring_rows(ws, ws.datasets.get(dataset), "as_of")
    assert [len(p) for p in batch.partitions_of(rows, 7)] == [64, 64, 64, 58]
    one, model, _ = batch.score_dataset(ws, dataset, as_of="as_of", partitions=1)
    many, _, created = batch.score_dataset(ws, dataset, as_of="as_of", partitions=7)
    assert many.id == one.id and not created  # the same rows, byte for byte: the same version
    scores = ws.datasets.load(one)
    assert len(scores) == 250 and set(scores["model_version"]) == {model.version}
    # Each row scored with its features as of its own time (the training join), as loopml serves them.
    expected = Predictor.from_bytes(ws.store.get(model.artifact_key)).predict_frame(rows).reshape(-1)
    assert scores["prediction"].tolist() == pytest.approx(expected.tolist())
    assert list(scores["customer_id"]) == list(rows["customer_id"])  # input order kept


def test_rows_without_features_or_an_as_of_column_are_refused_naming_them(scored_project) -> None:
    config, dataset = scored_project
    ws = Workspace.open(config, profile="ci")
    with pytest.raises(DataValidationError, match=r"lacks feature\(s\) .*as_of"):
        batch.score_dataset(ws, dataset)


def test_the_flow_scores_in_partitions_as_concurrent_tasks(scored_project, monkeypatch, prefect_settings) -> None:
    from flows.batch_score import batch_score

    config, dataset = scored_project
    monkeypatch.setattr(batch, "BLOCK", 32)
    ws = Workspace.open(config, profile="ci")
    expected, _, _ = batch.score_dataset(ws, dataset, as_of="as_of", partitions=1)
    result = batch_score(dataset=dataset, as_of="as_of", partitions=4, config=str(config), profile="ci")
    assert result.id == expected.id


def everyone(ws: Workspace, config: Path) -> str:
    """Every labelled customer as of its label time: enough rows for 3 real partitions."""
    labels = pd.read_csv(config.parent / "data" / "labels.csv")
    assert len(labels) > 2 * batch.BLOCK  # at least 3 blocks, so 3 partitions really split the rows
    labels[["customer_id"]].assign(as_of=labels["label_timestamp"]).to_csv(config.parent / "everyone.csv",
                                                                            index=False)
    ws.datasets.ingest("everyone", config.parent / "everyone.csv")  # the same rows: the same version
    return "everyone@latest"


def test_the_flow_on_a_dask_cluster_gives_the_same_version(scored_project, monkeypatch, prefect_settings) -> None:
    """prefect-dask's task runner on a LocalCluster of 2 worker processes: partitions scored in other
    processes, the same bytes as one partition in this one."""
    from flows.batch_score import batch_score_on_dask

    config, _ = scored_project
    ws = Workspace.open(config, profile="ci")
    expected, _, _ = batch.score_dataset(ws, everyone(ws, config), as_of="as_of", partitions=1)
    monkeypatch.setenv("LOOPML_DASK_WORKERS", "2")
    monkeypatch.delenv("LOOPML_DASK_ADDRESS", raising=False)
    result = batch_score_on_dask(dataset="everyone@latest", as_of="as_of", partitions=3,
                                 config=str(config), profile="ci")
    assert result.id == expected.id


def test_dataset_drift_is_the_same_for_one_partition_in_process_and_three_on_dask(
        scored_project, monkeypatch, prefect_settings) -> None:
    from flows.dataset_drift import dataset_drift_on_dask
    from loopml import dataset_drift

    config, _ = scored_project
    ws = Workspace.open(config, profile="ci")
    ref = everyone(ws, config)
    rows = batch.scoring_rows(ws, ws.datasets.get(ref), "as_of")
    plan = dataset_drift.plan(ws, batch.resolve_model(ws, "churn", None))
    whole = dataset_drift.sketch_partition(rows, plan.numeric, plan.categorical, plan.edges)
    expected, key = dataset_drift.report(ws, plan, [whole], ref)
    assert ws.store.exists(key) and len(expected.features) == len(plan.numeric) + len(plan.categorical)
    assert any(o.key.endswith(".npz") and "reference-sketch-" in o.key for o in ws.store.list("models/"))
    monkeypatch.setenv("LOOPML_DASK_WORKERS", "2")
    monkeypatch.delenv("LOOPML_DASK_ADDRESS", raising=False)
    report = dataset_drift_on_dask(dataset=ref, as_of="as_of", partitions=3, config=str(config), profile="ci")
    assert report.features == expected.features  # merged exactly: every statistic and p-value equal
    assert report.drift_detected == expected.drift_detected
