"""Your model, your task: trainers as plugins, task checks before training, holdouts, vetoes."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from loopml.context import Workspace
from loopml.errors import ConfigError, DataValidationError, UnknownBackendError
from loopml.examples import churn
from loopml.plugins import hookimpl
from loopml.stages.data import apply_features, frames, ingest
from loopml.stages.release import register_and_promote
from loopml.stages.training import train
from loopml.stages.validation import validate
from loopml.testing import TrainerSuite
from loopml.trainers import MlpOptions, TorchModuleOptions, mlp_trainer, torch_module_trainer

RESNET = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, sig, width):
            super().__init__()
            self.emb = nn.ModuleList(nn.Embedding(n, 3) for n in sig.cardinalities)
            self.inp = nn.Linear(len(sig.numeric) + 3 * len(sig.cardinalities), width)
            self.res = nn.Linear(width, width)
            self.out = nn.Linear(width, sig.n_outputs)

        def forward(self, numeric, codes):
            x = torch.cat([numeric] + [e(codes[:, j]) for j, e in enumerate(self.emb)], dim=1)
            h = torch.relu(self.inp(x))
            return self.out(h + torch.relu(self.res(h)))

    def build(signature, width=16):
        return Net(signature, width)

    def wrong_shape(signature):
        return nn.Linear(len(signature.numeric), 3)  # ignores codes: fails on the call
''')


@pytest.fixture(scope="module")
def user_package(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("userpkg")
    (folder / "team_models.py").write_text(RESNET)
    sys.path.insert(0, str(folder))
    yield "team_models"
    sys.path.remove(str(folder))
    sys.modules.pop("team_models", None)


@pytest.mark.training
class TestMlpTrainer(TrainerSuite):
    @pytest.fixture
    def trainer(self):
        return mlp_trainer(MlpOptions(epochs=3))


@pytest.mark.training
class TestTorchModuleTrainer(TrainerSuite):
    @pytest.fixture
    def trainer(self, user_package):
        return torch_module_trainer(TorchModuleOptions(module=f"{user_package}:build", kwargs={"width": 8},
                                                       epochs=3, early_stopping_patience=2))


# ---------------------------------------------------------------------------- projects
@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _plain_project(tmp_path_factory.mktemp("trainers"))


def _plain_project(folder: Path) -> Path:
    """The churn example with an empty [pipeline.model] table, so tests choose trainer and options."""
    config = churn.init_project(folder, n_customers=1500, seed=1)
    text = config.read_text()
    start = text.index("[pipeline.model]")
    end = text.index("[pipeline.training]")
    config.write_text(text[:start] + "[pipeline.model]\n" + text[end:].replace(
        "[profiles.ci.pipeline.model.options]\nepochs = 10\n", "").replace("thresholds = { auc = 0.70 }\n", ""))
    return config


def open_ws(config: Path, **pipeline) -> Workspace:
    over = {"model": {"trainer": "mlp", "options": {"epochs": 2}}, **pipeline}
    return Workspace.open(config, overrides={"pipeline": over})


def prepared(ws: Workspace):
    activity, _ = ingest(ws, "activity")
    labels, _ = ingest(ws, "labels")
    apply_features(ws, activity)
    return activity, labels


def test_unknown_trainer_is_refused_when_the_workspace_opens(project: Path) -> None:
    with pytest.raises(UnknownBackendError, match=r"unknown trainer 'xgb'.*choose one of: mlp, torch-module"):
        Workspace.open(project, overrides={"pipeline": {"model": {"trainer": "xgb"}}})
    with pytest.raises(ConfigError, match=r"pipeline\.model\.options\.epochs"):
        Workspace.open(project, overrides={"pipeline": {"model": {"options": {"epochs": "many"}}}})


def test_a_factory_that_cannot_be_imported_is_named_before_training(project: Path) -> None:
    ws = Workspace.open(project, overrides={"pipeline": {"model": {
        "trainer": "torch-module", "options": {"module": "no_such_pkg.models:build"}}}})
    with pytest.raises(ConfigError, match=r"pipeline\.model\.options\.module: cannot import module 'no_such_pkg"):
        ws.trainer  # noqa: B018


@pytest.mark.training
def test_a_module_whose_output_does_not_fit_the_task_fails_before_the_first_epoch(project: Path,
                                                                                   user_package: str) -> None:
    ws = Workspace.open(project, overrides={"pipeline": {"model": {
        "trainer": "torch-module", "options": {"module": f"{user_package}:wrong_shape"}}}})
    activity, labels = prepared(ws)
    train_rows, _ = frames(ws, labels)
    epochs: list[int] = []
    with pytest.raises(ConfigError, match=r"module 'team_models:wrong_shape'.*fails on a batch of 2 rows"):
        train(ws, labels, activity, train_rows, on_epoch=lambda e, t, m: epochs.append(e))
    assert epochs == []


def test_a_count_label_for_a_binary_task_is_refused_naming_the_column(project: Path) -> None:
    ws = open_ws(project, label="spend_next")  # a continuous amount, declared binary
    activity, labels = prepared(ws)
    train_rows, _ = frames(ws, labels)
    with pytest.raises(DataValidationError, match=r"label column 'spend_next' does not fit task \"binary\".*"
                                                  r"use task = \"regression\""):
        train(ws, labels, activity, train_rows)


@pytest.mark.training
def test_a_custom_module_trains_through_the_loop_and_its_fingerprint_caches(project: Path,
                                                                           user_package: str) -> None:
    over = {"trainer": "torch-module", "options": {"module": f"{user_package}:build", "epochs": 2}}
    ws = Workspace.open(project, overrides={"pipeline": {"model": over}})
    activity, labels = prepared(ws)
    train_rows, _ = frames(ws, labels)
    seen: list[tuple[int, int]] = []
    first = train(ws, labels, activity, train_rows, on_epoch=lambda e, t, m: seen.append((e, t)))
    assert seen == [(1, 2), (2, 2)] and not first.skipped and first.params["trainer"] == "torch-module"
    again = train(ws, labels, activity, train_rows)
    assert again.skipped and again.artifact_key == first.artifact_key
    other = Workspace.open(project, overrides={"pipeline": {"model": {**over, "options": {
        **over["options"], "kwargs": {"width": 8}}}}})
    assert not train(other, labels, activity, train_rows).skipped  # other options: another model


@pytest.mark.training
def test_an_ad_hoc_factory_from_python_replaces_the_configured_trainer(project: Path, user_package: str) -> None:
    import importlib

    build = importlib.import_module(user_package).build
    ws = open_ws(project)
    activity, labels = prepared(ws)
    train_rows, _ = frames(ws, labels)
    candidate = train(ws, labels, activity, train_rows, trainer=lambda sig: build(sig, width=4))
    assert candidate.params["trainer"] == "ad-hoc"
    assert ws.store.exists(candidate.artifact_key)


def test_time_holdout_validates_on_the_latest_period(project: Path) -> None:
    ws = open_ws(project, training={"holdout": {"after": "2025-02-20T00:00:00Z"}})
    _, labels = prepared(ws)
    train_rows, holdout = frames(ws, labels)
    import pandas as pd

    cutoff = pd.Timestamp("2025-02-20", tz="UTC")
    assert len(holdout) and len(train_rows)
    assert (pd.to_datetime(holdout["label_timestamp"], utc=True) >= cutoff).all()
    assert (pd.to_datetime(train_rows["label_timestamp"], utc=True) < cutoff).all()


@pytest.mark.training
def test_the_sensitive_attribute_may_also_be_a_feature(project: Path) -> None:
    ws = open_ws(project, sensitive_attribute="contract", gates={"min_slice_rows": 10})
    activity, labels = prepared(ws)
    train_rows, _ = frames(ws, labels)
    assert "contract" in train_rows.columns and "contract_x" not in train_rows.columns
    candidate = train(ws, labels, activity, train_rows)
    evaluation, _, _ = validate(ws, candidate, labels)
    fairness = next(c for c in evaluation.report.checks if c.name == "fairness")
    assert "contract=month" in fairness.reason and "contract=two_year" in fairness.reason


class Freeze:
    @hookimpl
    def loopml_before_promotion(self, model_name, candidate, report):
        return f"change freeze: {model_name} stays as it is"


@pytest.mark.training
def test_a_promotion_veto_lands_in_the_report_and_the_history(project: Path, tmp_path: Path) -> None:
    # a two-epoch model selects few customers of either group: only the veto is under test here
    ws = open_ws(_plain_project(tmp_path / "veto"), gates={"min_selection_rate_ratio": 0.0, "max_error_rate_gap": 1.0})
    ws.manager.register(Freeze(), "freeze")
    try:
        activity, labels = prepared(ws)
        train_rows, _ = frames(ws, labels)
        candidate = train(ws, labels, activity, train_rows)
        evaluation, key, html = validate(ws, candidate, labels)
    finally:
        ws.manager.unregister("freeze")
    assert [c.name for c in evaluation.report.failed_checks] == ["promotion-veto"]
    assert "freeze: change freeze: churn stays as it is" in html
    model, event = register_and_promote(ws, candidate, evaluation.report, key, None)
    assert event is None and model.status == "rejected"
    assert "change freeze" in ws.registry.history("churn")[-1].reason


@pytest.mark.training
def test_a_single_class_holdout_is_a_failed_gate_with_a_reason() -> None:
    from loopml.artifacts import Predictor
    from loopml.config import GatesConfig
    from loopml.trainers import train_model
    from loopml.validation import evaluate

    data = churn.generate(400, seed=4)
    from loopml.features import FeatureView, point_in_time_join

    view = FeatureView("activity", "customer_id", "event_timestamp",
                       ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
    frame = point_in_time_join(data.labels, "label_timestamp", data.activity, view).dropna()
    predictor = Predictor.from_bytes(train_model(frame, "churned", view.numeric, view.categorical,
                                                 epochs=1).artifact)
    holdout = frame[frame["churned"] == 0].head(60).reset_index(drop=True)
    ev = evaluate(model_name="churn", candidate_ref="c", candidate=predictor, baseline_ref=None, baseline=None,
                  holdout=holdout, label="churned", sensitive="senior", gates=GatesConfig(latency_samples=20),
                  thresholds={"auc": 0.7}, servability=lambda: (True, "ok"))
    holdout_check = next(c for c in ev.report.checks if c.name == "holdout")
    assert not holdout_check.passed and "all have class 0" in holdout_check.reason
    assert not ev.report.passed
    assert ev.metrics == {} and ev.slices == {}  # nothing is computed on rows that cannot judge
    assert [c.name for c in ev.report.checks][:2] == ["holdout", "latency"]  # no metric gate pretends to pass


@pytest.mark.slow
@pytest.mark.parametrize("task,label,expect", [("regression", "spend_next", {"rmse", "mae", "r2"}),
                                               ("multiclass", "plan", {"macro_auc", "accuracy", "log_loss"})])
def test_gates_and_report_follow_the_task(project: Path, task: str, label: str, expect: set[str]) -> None:
    thresholds = {"r2": 0.0} if task == "regression" else {"macro_auc": 0.5}
    ws = open_ws(project, task=task, label=label, model={"trainer": "mlp", "options": {"epochs": 8}},
                 gates={"thresholds": thresholds, "max_fairness_gap": 100.0, "latency_p99_ms": 1000.0,
                        "max_latency_ratio": 100.0})
    activity, labels = prepared(ws)
    train_rows, _ = frames(ws, labels)
    candidate = train(ws, labels, activity, train_rows)
    evaluation, _, html = validate(ws, candidate, labels)
    assert set(evaluation.metrics) == expect
    assert evaluation.report.passed, evaluation.report.failed_checks
    assert {"regression": "alt='predicted vs actual'", "multiclass": "alt='confusion matrix'"}[task] in html
    assert np.isfinite(list(evaluation.metrics.values())).all()
