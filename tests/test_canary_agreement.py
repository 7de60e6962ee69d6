"""The canary catches a candidate that answers the right mix to the wrong rows: constant, shuffled
and inverted models are rolled back on every task, a retrained one is promoted, each with a wide
margin around ``min_agreement`` (0.25). Real models score the rows; only the bad candidates' answers
are made up, as a broken model would make them."""

from __future__ import annotations

import numpy as np
import pytest

from loopml.artifacts import Predictor
from loopml.canary import judge
from loopml.config import RolloutConfig
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.trainers import train_model

pytestmark = pytest.mark.training

VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
LABELS = {"binary": "churned", "regression": "monthly_charges", "multiclass": "contract"}


@pytest.fixture(scope="module")
def frame():
    data = churn.generate(1200, seed=5)
    return point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()


def trained(frame, task: str, seed: int) -> Predictor:
    label = LABELS[task]
    numeric = tuple(c for c in VIEW.numeric if c != label)
    categorical = tuple(c for c in VIEW.categorical if c != label)
    return Predictor.from_bytes(train_model(frame, label, numeric, categorical, task=task, seed=seed,
                                            epochs=15).artifact)


def answers(predictor: Predictor, rows: list[dict]) -> list:
    return predictor.answer(predictor.predict_rows(rows))["predictions"]


def broken(kind: str, task: str, honest: list, classes: tuple[str, ...]) -> list:
    rng = np.random.default_rng(3)
    if kind == "shuffled":
        return [honest[i] for i in rng.permutation(len(honest))]
    if task == "multiclass":
        if kind == "constant":
            return [max(set(honest), key=honest.count)] * len(honest)
        return [classes[(classes.index(c) + 1) % len(classes)] for c in honest]  # every class swapped
    values = np.asarray(honest, float)
    if kind == "constant":
        return [float(np.median(values))] * len(values)
    return list(1 - values) if task == "binary" else list(2 * values.mean() - values)  # inverted


@pytest.mark.parametrize("task", ["binary", "regression", "multiclass"])
def test_constant_shuffled_and_inverted_candidates_fail_agreement_and_a_retrained_one_passes(frame, task) -> None:
    production, retrained = trained(frame, task, seed=1), trained(frame, task, seed=2)
    features = [c for c in (*VIEW.numeric, *VIEW.categorical) if c != LABELS[task]]
    rows = frame[features].to_dict("records")
    half = len(rows) // 2
    served = [{"version": 1, "inputs": r, "output": o, "latency_ms": 1.0}
              for r, o in zip(rows[:half], answers(production, rows[:half]), strict=True)]
    policy = RolloutConfig(min_requests=100)
    found = {}
    for kind in ("retrained", "constant", "shuffled", "inverted"):
        honest = answers(retrained if kind == "retrained" else production, rows[half:])
        given = honest if kind == "retrained" else broken(kind, task, honest, production.signature.classes)
        candidate = [{"version": 2, "inputs": r, "output": o, "latency_ms": 1.0}
                     for r, o in zip(rows[half:], given, strict=True)]
        verdict = judge(served + candidate, model="m", candidate=2, production=1, task=task, policy=policy,
                        latency_floor_ms=50.0, started_at=0.0, deadline_passed=False, now=1.0,
                        production_answers=lambda rs: answers(production, rs))
        check = next(c for c in verdict.checks if c.name == "canary-agreement")
        found[kind] = (verdict.decision, round(check.value, 3))
    assert found["retrained"][0] == "promote" and found["retrained"][1] >= 0.75, found  # 0.25 is the limit
    for kind in ("constant", "shuffled", "inverted"):
        assert found[kind][0] == "rollback" and found[kind][1] <= 0.1, found
