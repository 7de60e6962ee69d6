"""Conformance suite for trainers: what loopml relies on when it trains, gates, serves and caches.

A team tests its own trainer by subclassing :class:`TrainerSuite` and providing a ``trainer``
fixture (and, if it does not handle every task, ``supported_tasks``)::

    from loopml.testing import TrainerSuite

    class TestGbdtTrainer(TrainerSuite):
        supported_tasks = ("binary", "regression")

        @pytest.fixture
        def trainer(self):
            return GbdtTrainer(GbdtOptions(rounds=20))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from loopml import tasks
from loopml.artifacts import Predictor
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.serving.builtin import output_problem
from loopml.trainers import TrainRequest

NUMERIC = ("tenure_months", "monthly_charges", "support_calls")
CATEGORICAL = ("contract", "region")
LABELS = {"binary": "churned", "multiclass": "plan", "regression": "spend_next"}


def _frame() -> Any:
    view = FeatureView("activity", "customer_id", "event_timestamp", NUMERIC, CATEGORICAL)
    data = churn.generate(600, seed=3)
    joined = point_in_time_join(data.labels, "label_timestamp", data.activity, view)
    return joined[joined["activity__event_timestamp"].notna()].reset_index(drop=True)


class TrainerSuite:
    """Trainer contract: exported artifacts loopml can load and serve, task-shaped outputs,
    determinism for a seed, progress per epoch, a stable fingerprint."""

    supported_tasks: tuple[str, ...] = ("binary", "multiclass", "regression")

    @pytest.fixture
    def trainer(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `trainer` fixture")

    @pytest.fixture(scope="class")
    @classmethod
    def frame(cls) -> Any:
        return _frame()

    def request(self, frame: Any, task: str, seed: int = 7, on_epoch: Any = None) -> Any:
        label = LABELS[task]
        classes = tasks.check_label(frame[label], task, label)  # type: ignore[arg-type]
        return TrainRequest(frame, label, NUMERIC, CATEGORICAL, task, classes, seed=seed,  # type: ignore[arg-type]
                            on_epoch=on_epoch)

    @pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
    def test_artifact_loads_and_answers_in_the_shape_of_the_task(self, trainer: Any, frame: Any, task: str) -> None:
        if task not in self.supported_tasks:
            pytest.skip(f"not applicable: {task} is not supported by this trainer")
        trained = trainer.fit(self.request(frame, task))
        predictor = Predictor.from_bytes(trained.artifact)
        assert predictor.signature.task == task and not predictor.legacy
        rows = frame[list(NUMERIC + CATEGORICAL)].head(7)
        scores = predictor.predict_rows(rows.to_dict("records"))
        assert output_problem(predictor.signature, scores, 7) is None
        assert np.allclose(scores, predictor.predict_frame(rows), atol=1e-5)

    def test_same_seed_same_predictions(self, trainer: Any, frame: Any) -> None:
        task = self.supported_tasks[0]
        a, b = (Predictor.from_bytes(trainer.fit(self.request(frame, task, seed=11)).artifact) for _ in range(2))
        rows = frame.head(50)
        assert np.array_equal(a.predict_frame(rows), b.predict_frame(rows))

    def test_reports_every_epoch_with_metrics(self, trainer: Any, frame: Any) -> None:
        seen: list[tuple[int, int, dict[str, float]]] = []
        trained = trainer.fit(self.request(frame, self.supported_tasks[0],
                                           on_epoch=lambda e, t, m: seen.append((e, t, m))))
        assert seen, "on_epoch was never called"
        assert [e for e, _, _ in seen] == list(range(1, len(seen) + 1))
        assert all(isinstance(v, float) for _, _, m in seen for v in m.values())
        assert len(trained.history) == len(seen)

    def test_fingerprint_is_a_stable_string(self, trainer: Any) -> None:
        assert isinstance(trainer.fingerprint(), str) and trainer.fingerprint() == trainer.fingerprint()
