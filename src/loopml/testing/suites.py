"""Conformance suites: the behaviour every backend of a kind must show.

Subclass one and provide its fixture (``store``, ``tracker``, ``registry`` …); each test names
the promise it checks. Optional capabilities are methods a subclass may override; the tests that
need them skip otherwise, with a reason that starts "not applicable" (CI's strict mode, which fails
every other skip, lets those through).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from loopml.errors import (
    IntegrityError,
    ModelNotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    RegistryError,
    StaleAliasError,
    UnsafeKeyError,
)
from loopml.records import RunInfo

TRAVERSAL_KEYS = ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "a/./b",
                  "%2e%2e/escape", "a/%2E%2E/b", "a\\..\\b", "", "a/", "C:/x", ".hidden",
                  "a\n/b", "a/b\n", "x" * 300, "zz.ref/y", "labels.ref"]


class ArtifactStoreSuite:
    """Store contract: create-only immutable objects, verified reads, safe keys."""

    @pytest.fixture
    def store(self) -> Any:  # pragma: no cover - subclasses provide it
        raise NotImplementedError("provide a `store` fixture returning a fresh, empty store")

    def corrupt(self, store: Any, key: str) -> None:
        """Overwrite the stored bytes of ``key`` behind the store's back (optional)."""
        pytest.skip("not applicable: this store's suite does not implement corrupt()")

    def test_putting_the_same_bytes_again_heals_a_damaged_blob(self, store: Any) -> None:
        data = b"model weights" * 100
        store.put("models/heal/model.pt", data)
        self.corrupt(store, "models/heal/model.pt")
        with pytest.raises(IntegrityError):
            store.get("models/heal/model.pt")
        assert store.put("models/heal/model.pt", data).sha256 == hashlib.sha256(data).hexdigest()
        assert store.get("models/heal/model.pt") == data

    def test_put_then_get_returns_the_same_bytes_and_sha256(self, store: Any) -> None:
        data = b"loopml" * 1000
        info = store.put("models/m1/model.pt", data, metadata={"kind": "model"})
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.size == len(data)
        assert store.get("models/m1/model.pt") == data
        assert store.info("models/m1/model.pt").metadata["kind"] == "model"

    def test_put_accepts_file_objects_and_paths(self, store: Any, tmp_path: Path) -> None:
        src = tmp_path / "payload.bin"
        src.write_bytes(b"x" * 3_000_000)
        assert store.put("big/from-path", src).size == 3_000_000
        assert store.put("big/from-file", io.BytesIO(b"abc")).size == 3
        out = store.download("big/from-path", tmp_path / "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
        assert out.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()

    def test_same_content_under_same_key_is_idempotent(self, store: Any) -> None:
        first = store.put("a/b", b"same")
        again = store.put("a/b", b"same")
        assert again.sha256 == first.sha256

    def test_different_content_under_existing_key_is_refused(self, store: Any) -> None:
        store.put("a/b", b"one")
        with pytest.raises(ObjectExistsError, match="a/b"):
            store.put("a/b", b"two")
        assert store.get("a/b") == b"one"

    def test_exists_list_and_delete(self, store: Any) -> None:
        for key in ("p/1", "p/2", "q/1"):
            store.put(key, key.encode())
        assert store.exists("p/1") and not store.exists("p/3")
        assert [i.key for i in store.list("p/")] == ["p/1", "p/2"]
        store.delete("p/1")
        assert not store.exists("p/1")
        assert [i.key for i in store.list("p/")] == ["p/2"]

    def test_missing_key_raises_not_found(self, store: Any) -> None:
        with pytest.raises(ObjectNotFoundError, match="nope"):
            store.get("nope")
        with pytest.raises(ObjectNotFoundError):
            store.delete("nope")

    @pytest.mark.parametrize("key", TRAVERSAL_KEYS)
    def test_keys_that_could_escape_the_root_are_rejected(self, store: Any, key: str) -> None:
        with pytest.raises(UnsafeKeyError):
            store.put(key, b"x")
        with pytest.raises(UnsafeKeyError):
            store.get(key)

    def test_corrupted_object_raises_integrity_error(self, store: Any) -> None:
        store.put("c/obj", b"original bytes")
        self.corrupt(store, "c/obj")
        with pytest.raises(IntegrityError, match="c/obj"):
            store.get("c/obj")

    def test_concurrent_writers_of_one_key_agree(self, store: Any) -> None:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                store.put("race/key", b"identical payload")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.get("race/key") == b"identical payload"


class TrackerSuite:
    """Tracker contract: everything logged can be read back; every verb is retry-safe."""

    @pytest.fixture
    def tracker(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `tracker` fixture")

    def read_back(self, tracker: Any, run_id: str) -> dict[str, Any]:
        """Return {"params", "metrics" (name -> list of (step, value)), "tags", "status",
        "artifacts"} read through the vendor's own client. Default: the QueryableTracker API."""
        run = tracker.get_run(run_id)
        return {"params": dict(run.params),
                "metrics": {k: [(p.step, p.value) for p in v] for k, v in run.metrics.items()},
                "tags": dict(run.tags), "status": run.status, "artifacts": list(run.artifacts)}

    def _run(self) -> RunInfo:
        return RunInfo(run_id=uuid.uuid4().hex, experiment="conformance", name="suite-run",
                       tags={"loopml.dataset_version": "d@abc"})

    def test_a_full_run_reads_back(self, tracker: Any, tmp_path: Path) -> None:
        run = self._run()
        tracker.start_run(run)
        tracker.log_params(run.run_id, {"lr": 0.01, "epochs": 3})
        for step in range(3):
            tracker.log_metrics(run.run_id, {"loss": 1.0 / (step + 1)}, step=step)
        tracker.set_tags(run.run_id, {"loopml.git_commit": "deadbeef"})
        report = tmp_path / "report.html"
        report.write_text("<h1>ok</h1>")
        tracker.log_artifact(run.run_id, report)
        tracker.end_run(run.run_id, "FINISHED")
        got = self.read_back(tracker, run.run_id)
        assert got["params"]["lr"] == "0.01" and got["params"]["epochs"] == "3"
        assert [v for _, v in sorted(got["metrics"]["loss"])] == pytest.approx([1.0, 0.5, 1 / 3])
        assert got["tags"]["loopml.git_commit"] == "deadbeef"
        assert got["tags"]["loopml.dataset_version"] == "d@abc"
        assert got["status"] == "FINISHED"
        assert "report.html" in got["artifacts"]

    def test_retried_calls_are_harmless(self, tracker: Any, tmp_path: Path) -> None:
        """A task retried after a transient error repeats every verb with the same arguments."""
        run = self._run()
        report = tmp_path / "report.html"
        report.write_text("<h1>ok</h1>")
        for _ in range(2):
            tracker.start_run(run)
            tracker.log_params(run.run_id, {"lr": 0.1})
            for step in range(2):
                tracker.log_metrics(run.run_id, {"loss": 0.5 / (step + 1)}, step=step)
            tracker.set_tags(run.run_id, {"loopml.git_commit": "deadbeef"})
            tracker.log_artifact(run.run_id, report)
        for _ in range(2):
            tracker.end_run(run.run_id, "FINISHED")
        got = self.read_back(tracker, run.run_id)
        assert got["params"]["lr"] == "0.1"
        assert sorted(got["metrics"]["loss"]) == [(0, 0.5), (1, 0.25)]  # one point per step, not two
        assert got["tags"]["loopml.git_commit"] == "deadbeef"
        assert got["artifacts"].count("report.html") == 1
        assert got["status"] == "FINISHED"

    def test_failed_run_is_marked_failed(self, tracker: Any) -> None:
        run = self._run()
        tracker.start_run(run)
        tracker.end_run(run.run_id, "FAILED")
        assert self.read_back(tracker, run.run_id)["status"] == "FAILED"


class RegistrySuite:
    """Registry contract: numbered versions with lineage, compare-and-set aliases, history."""

    @pytest.fixture
    def registry(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `registry` fixture")

    SHA = "a" * 64

    def _register(self, registry: Any, name: str = "churn", **kw: Any) -> Any:
        return registry.register(name, artifact_key=f"models/{name}/{uuid.uuid4().hex}",
                                 artifact_sha256=self.SHA, actor="suite", **kw)

    def test_versions_are_numbered_from_one_and_keep_lineage(self, registry: Any) -> None:
        v1 = self._register(registry, dataset_version="ds@123", git_commit="abc", params={"lr": 0.1},
                            metrics={"auc": 0.9}, environment={"python": "3.11"})
        v2 = self._register(registry)
        assert (v1.version, v2.version) == (1, 2)
        got = registry.get("churn", 1)
        assert got.dataset_version == "ds@123" and got.git_commit == "abc"
        assert got.params == {"lr": 0.1} and got.metrics == {"auc": 0.9}
        assert registry.get("churn").version == 2  # latest

    def test_first_promotion_expects_no_alias(self, registry: Any) -> None:
        self._register(registry)
        event = registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="first")
        assert (event.from_version, event.to_version) == (None, 1)
        assert registry.get("churn", alias="production").version == 1

    @pytest.mark.parametrize("alias", ["", " production", "Production", "prod/1", "a" * 64, "prod\n"])
    def test_an_invalid_alias_is_refused_naming_it(self, registry: Any, alias: str) -> None:
        from loopml.errors import RegistryError

        self._register(registry)
        with pytest.raises(RegistryError, match="alias"):
            registry.set_alias("churn", alias, 1, expected=None, actor="a", reason="r")
        assert registry.aliases("churn") == {}

    def test_stale_compare_and_set_is_refused_and_changes_nothing(self, registry: Any) -> None:
        for _ in range(3):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        registry.set_alias("churn", "production", 2, expected=1, actor="a", reason="r")
        with pytest.raises(StaleAliasError) as info:
            registry.set_alias("churn", "production", 3, expected=1, actor="b", reason="stale")
        assert info.value.actual == 2
        assert registry.get("churn", alias="production").version == 2

    def test_rollback_returns_to_the_previous_version(self, registry: Any) -> None:
        for _ in range(2):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        registry.set_alias("churn", "production", 2, expected=1, actor="a", reason="r")
        event = registry.rollback("churn", "production", actor="oncall", reason="bad latency")
        assert (event.from_version, event.to_version, event.action) == (2, 1, "rollback")
        assert registry.get("churn", alias="production").version == 1
        with pytest.raises(RegistryError, match="no earlier version"):  # no toggling back to v2
            registry.rollback("churn", "production", actor="oncall", reason="again")
        assert registry.get("churn", alias="production").version == 1

    def test_rollback_of_a_version_no_longer_current_is_refused(self, registry: Any) -> None:
        for _ in range(3):
            self._register(registry)
        for version, expected in ((1, None), (2, 1), (3, 2)):
            registry.set_alias("churn", "production", version, expected=expected, actor="a", reason="r")
        registry.rollback("churn", "production", expected=3, actor="alice", reason="v3 is slow")
        # Bob saw v3 too; his rollback must not take production back a second step, to v1.
        with pytest.raises(StaleAliasError) as info:
            registry.rollback("churn", "production", expected=3, actor="bob", reason="v3 is slow")
        assert info.value.actual == 2
        assert registry.get("churn", alias="production").version == 2
        assert [e.action for e in registry.history("churn")].count("rollback") == 1

    def test_history_is_append_only_and_ordered(self, registry: Any) -> None:
        self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="alice", reason="why")
        entries = registry.history("churn")
        assert [e.action for e in entries] == ["register", "promote"]
        assert entries[-1].actor == "alice" and entries[-1].reason == "why"

    def test_rejected_versions_cannot_be_promoted(self, registry: Any) -> None:
        self._register(registry, status="rejected")
        with pytest.raises(RegistryError, match="rejected"):
            registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")

    def test_unknown_versions_and_aliases_raise_not_found(self, registry: Any) -> None:
        with pytest.raises(ModelNotFoundError):
            registry.get("nothing-here")
        self._register(registry)
        with pytest.raises(ModelNotFoundError):
            registry.get("churn", 99)
        with pytest.raises(ModelNotFoundError):
            registry.get("churn", alias="production")

    def test_concurrent_promotions_from_one_state_have_one_winner(self, registry: Any) -> None:
        for _ in range(6):
            self._register(registry)
        registry.set_alias("churn", "production", 1, expected=None, actor="a", reason="r")
        outcomes: list[str] = []

        def promote(version: int) -> None:
            try:
                registry.set_alias("churn", "production", version, expected=1, actor="t", reason="r")
                outcomes.append("won")
            except StaleAliasError:
                outcomes.append("stale")

        threads = [threading.Thread(target=promote, args=(v,)) for v in range(2, 7)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["stale"] * 4 + ["won"]


# ------------------------------------------------------------------------------------ features
def _ts(text: str) -> Any:
    import pandas as pd

    return pd.Timestamp(text, tz="UTC")


class FeatureStoreSuite:
    """Feature store contract: point-in-time joins offline, the same values online."""

    @pytest.fixture
    def feature_store(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `feature_store` fixture returning an empty store")

    @staticmethod
    def view(ttl_days: float | None = None) -> Any:
        from datetime import timedelta

        from loopml.features import FeatureView

        return FeatureView("suite_view", "entity_id", "event_timestamp", ("amount",), ("plan",),
                           timedelta(days=ttl_days) if ttl_days else None)

    @staticmethod
    def source() -> Any:
        import pandas as pd

        return pd.DataFrame({
            "entity_id": [1, 1, 1, 2],
            "event_timestamp": [_ts("2025-01-01"), _ts("2025-01-10"), _ts("2025-01-20"), _ts("2025-01-05")],
            "amount": [10.0, 20.0, 30.0, 90.0], "plan": ["a", "b", "c", "z"],
        })

    def test_historical_features_are_point_in_time_correct(self, feature_store: Any) -> None:
        import pandas as pd

        feature_store.apply(self.view(), self.source())
        entities = pd.DataFrame({"entity_id": [1, 1, 2, 3],
                                 "label_ts": [_ts("2025-01-15"), _ts("2025-01-10"), _ts("2025-01-04"),
                                              _ts("2025-02-01")]})
        out = feature_store.historical_features("suite_view", entities, "label_ts")
        assert out["entity_id"].tolist() == [1, 1, 2, 3]
        assert out["amount"].tolist()[:2] == [20.0, 20.0]  # never the 2025-01-20 value
        assert out["plan"].tolist()[:2] == ["b", "b"]
        assert out["amount"].isna().tolist()[2:] == [True, True]

    def test_ttl_excludes_stale_rows(self, feature_store: Any) -> None:
        import pandas as pd

        feature_store.apply(self.view(ttl_days=7), self.source())
        entities = pd.DataFrame({"entity_id": [1, 1], "label_ts": [_ts("2025-01-12"), _ts("2025-01-19")]})
        out = feature_store.historical_features("suite_view", entities, "label_ts")
        assert out["amount"].tolist()[0] == 20.0 and pd.isna(out["amount"].tolist()[1])

    def test_online_features_match_offline_as_of_materialization(self, feature_store: Any) -> None:
        from datetime import datetime

        feature_store.apply(self.view(), self.source())
        assert feature_store.materialize("suite_view", datetime(2025, 1, 15, tzinfo=UTC)) == 2
        online = feature_store.online_features("suite_view", [1, 2, 3])
        assert online["amount"].tolist()[:2] == [20.0, 90.0]
        assert online["plan"].tolist()[:2] == ["b", "z"]
        assert online["amount"].isna().tolist()[2]


# ------------------------------------------------------------------------------------ serving
class ServingBackendSuite:
    """Serving contract: deploy, predict with the version, swap, roll back, 4xx for bad input."""

    @pytest.fixture
    def serving(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `serving` fixture; undeploy everything after the test")

    @pytest.fixture(scope="class")
    @classmethod
    def model_files(cls, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
        """Two tiny trained artifacts (versions 1 and 2) of the example churn model."""
        from loopml.examples import churn
        from loopml.features import FeatureView, point_in_time_join
        from loopml.trainers import train_model

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
        from datetime import datetime

        from loopml.records import ModelVersion

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
        from loopml.errors import LoopmlError

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
        from loopml.protocols import Monitor, members

        assert [m for m in members(Monitor) if not hasattr(monitor, m)] == []

    def test_drift_on_a_known_shift_is_recorded_with_the_shifted_feature(self, monitor: Any) -> None:
        import numpy as np
        import pandas as pd

        from loopml.drift import detect_drift

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
        from loopml.records import PromotionEvent

        monitor.on_promotion(PromotionEvent("suite-model", "production", 1, 2, "promote", "me", "better"))
        promos = [e for e in self.recorded(monitor) if e["event"] == "promotion"]
        assert len(promos) == 1 and promos[0]["to_version"] == 2

    def test_observations_are_accepted(self, monitor: Any) -> None:
        import pandas as pd

        monitor.observe("suite-model", 1, pd.DataFrame({"x": [1.0, 2.0]}), [0.1, 0.9], [1.0, 2.0])
        assert any(e["event"] == "observe" for e in self.recorded(monitor))
