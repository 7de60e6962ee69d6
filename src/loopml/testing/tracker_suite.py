"""Conformance suite for trackers: runs, params, metrics, artifacts, idempotence."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from loopml.records import RunInfo


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
