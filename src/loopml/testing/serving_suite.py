"""Conformance suites for serving backends and monitors."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loopml.drift import detect_drift
from loopml.errors import LoopmlError
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.protocols import Monitor, members
from loopml.records import ModelVersion, PromotionEvent
from loopml.trainers import train_model


class ServingBackendSuite:
    """Serving contract: deploy, predict with the version, swap, roll back, 4xx for bad input."""

    @pytest.fixture
    def serving(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `serving` fixture; undeploy everything after the test")

    @pytest.fixture(scope="class")
    @classmethod
    def model_files(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
        """Two tiny trained artifacts (versions 1 and 2) of the example churn model."""
        view = FeatureView("activity", "customer_id", "event_timestamp",
                           ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
        data = churn.generate(400, seed=9)
        frame = point_in_time_join(data.labels, "label_timestamp", data.activity, view).dropna()
        folder = tmp_path_factory.mktemp("models")
        files = {}
        for version in (1, 2):
            trained = train_model(frame, "churned", view.numeric, view.categorical, epochs=2, seed=version)
            files[version] = folder / f"v{version}.pt"
            files[version].write_bytes(trained.artifact)
        return files

    GOOD = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month",
            "region": "north"}

    @staticmethod
    def model_version(version: int, path: Path) -> Any:
        return ModelVersion("suite-model", version, "approved", f"models/v{version}",
                            hashlib.sha256(path.read_bytes()).hexdigest(),
                            datetime.now(UTC), "suite")

    def test_deploy_then_predict_names_the_version(self, serving: Any, model_files: dict[int, Path]) -> None:
        serving.deploy(self.model_version(1, model_files[1]), model_files[1])
        body = serving.predict([self.GOOD, self.GOOD])
        assert body["version"] == 1 and len(body["predictions"]) == 2
        assert all(0.0 <= p <= 1.0 for p in body["predictions"])

    def test_swap_and_rollback_move_traffic(self, serving: Any, model_files: dict[int, Path]) -> None:
        serving.deploy(self.model_version(1, model_files[1]), model_files[1])
        serving.deploy(self.model_version(2, model_files[2]), model_files[2])
        serving.set_traffic({2: 1.0})
        assert serving.predict([self.GOOD])["version"] == 2
        serving.set_traffic({1: 1.0})
        assert serving.predict([self.GOOD])["version"] == 1

    def test_bad_input_is_refused_and_serving_goes_on(self, serving: Any, model_files: dict[int, Path]) -> None:
        serving.deploy(self.model_version(1, model_files[1]), model_files[1])
        with pytest.raises(LoopmlError, match=r"HTTP 4\d\d.*monthly_charges"):
            serving.predict([{**self.GOOD, "monthly_charges": "lots"}])
        with pytest.raises(LoopmlError, match=r"HTTP 4\d\d.*contract"):
            serving.predict([{k: v for k, v in self.GOOD.items() if k != "contract"}])
        assert serving.predict([self.GOOD])["version"] == 1

    def test_smoke_test_accepts_a_good_artifact_and_refuses_garbage(self, serving: Any,
                                                                     model_files: dict[int, Path]) -> None:
        ok, why = serving.smoke_test(model_files[1].read_bytes(), [self.GOOD])
        assert ok, why
        ok, why = serving.smoke_test(b"not a model", [self.GOOD])
        assert not ok and why


# ------------------------------------------------------------------------------------ monitors
class MonitorSuite:
    """Monitor contract: accepts observations; records drift (on a known shift) and promotions."""

    @pytest.fixture
    def monitor(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `monitor` fixture")

    def recorded(self, monitor: Any) -> list[dict[str, Any]]:
        """What the monitor recorded, read back through its own backend, as a list of dicts with an
        "event" key ("drift", "promotion", "observe") and the event's fields.

        The Monitor protocol has no read verb (Prometheus is read by scraping, Grafana through its
        API), so every suite says how to read its monitor back: override this."""
        raise NotImplementedError(
            f"{type(self).__name__} must override recorded(monitor): read back what {type(monitor).__name__} "
            "recorded through its own backend (a scrape, an API call, a file)")

    def test_the_monitor_has_every_verb_of_the_protocol(self, monitor: Any) -> None:
        assert [m for m in members(Monitor) if not hasattr(monitor, m)] == []

    def test_drift_on_a_known_shift_is_recorded_with_the_shifted_feature(self, monitor: Any) -> None:
        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(0)
        reference = pd.DataFrame({"x": rng.normal(0, 1, 3000), "y": rng.normal(0, 1, 3000)})
        current = pd.DataFrame({"x": rng.normal(1, 1, 500), "y": rng.normal(0, 1, 500)})
        report = detect_drift(reference, current, numeric=["x", "y"], categorical=[], alpha=0.01,
                              min_samples=100, model="suite-model", reference_ref="ref")
        assert report.drifted_features == ("x",)
        monitor.on_drift(report)
        drift = [e for e in self.recorded(monitor) if e["event"] == "drift"]
        assert len(drift) == 1 and "x" in json.dumps(drift[0], default=str)

    def test_promotions_are_recorded(self, monitor: Any) -> None:
        monitor.on_promotion(PromotionEvent("suite-model", "production", 1, 2, "promote", "me", "better"))
        promos = [e for e in self.recorded(monitor) if e["event"] == "promotion"]
        assert len(promos) == 1 and promos[0]["to_version"] == 2

    def test_observations_are_accepted(self, monitor: Any) -> None:
        import pandas as pd

        monitor.observe("suite-model", 1, pd.DataFrame({"x": [1.0, 2.0]}), [0.1, 0.9], [1.0, 2.0])
        assert any(e["event"] == "observe" for e in self.recorded(monitor))
