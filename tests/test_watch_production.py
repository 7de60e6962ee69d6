"""Watching production on the in-process server: a canary that promotes or rolls back on live
traffic, shadow mode, live performance from delayed labels, and training-serving skew."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from loop_steps import train_and_validate

from loopml import canary, events, performance
from loopml.context import Workspace
from loopml.examples import churn
from loopml.stages.deploy import sync_serving
from loopml.stages.drift_check import check_drift, drift_reference
from loopml.stages.monitoring import prediction_window
from loopml.stages.project import production_model, view_of
from loopml.stages.release import register_and_promote
from loopml.testing import HookRecorder
from loopml.traffic import TrafficGenerator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("watch")
    churn.init_project(folder, n_customers=2000, seed=0)
    return folder / "loopml.toml"


def open_ws(config: Path, serving_of: Workspace | None = None, **pipeline: dict) -> Workspace:
    """A workspace with pipeline overrides; ``serving_of``: share that workspace's running server."""
    ws = Workspace.open(config, profile="ci", overrides={"pipeline": pipeline} if pipeline else None)
    if serving_of is not None:
        ws.__dict__["serving"] = serving_of.serving  # one in-process server, seen through both configs
    return ws


def train_and_register(ws: Workspace) -> tuple:
    candidate, evaluation, key, baseline = train_and_validate(ws)
    return register_and_promote(ws, candidate, evaluation.report, key, baseline)


def judged(ws: Workspace, traffic: TrafficGenerator, timeout: float = 300) -> canary.CanaryVerdict:
    """Send requests until the canary has enough rows to be judged (counted, not timed)."""
    deadline = time.monotonic() + timeout
    while True:
        traffic.send(100)
        verdict = canary.judge_active(ws, "churn")
        assert verdict is not None
        if verdict.decision != "wait":
            return verdict
        assert time.monotonic() < deadline, verdict.reason


@pytest.fixture(scope="module")
def served(config: Path):
    """v1 in production and served in-process; yields (workspace, url, request rows)."""
    ws = open_ws(config)
    v1, event = train_and_register(ws)
    assert event is not None and event.alias == "production" and v1.version == 1  # first model: no canary
    url = sync_serving(ws, "churn")
    rows = churn.request_rows(churn.generate(600, seed=11), view_of(ws).features)
    yield ws, url + "/predict", rows
    ws.serving.undeploy()


def test_an_approved_candidate_is_a_canary_first_then_promoted_on_live_traffic(config: Path, served) -> None:
    ws, url, rows = served
    recorder = HookRecorder()
    ws2 = open_ws(config, ws, training={"seed": 7})
    ws2.manager.register(recorder, "recorder")
    before = ws.registry.aliases("churn")["production"]  # v1, or a later one if another test ran first
    v2, event = train_and_register(ws2)
    assert event is not None and event.alias == "canary" and v2.status == "approved"
    assert ws.registry.aliases("churn") == {"production": before, "canary": v2.version}  # production has not moved
    sync_serving(ws, "churn")
    assert ws.serving.status()["traffic"] == {str(before): 0.9, str(v2.version): 0.1}
    traffic = TrafficGenerator(url, rows)
    verdict = judged(ws, traffic)
    assert verdict.decision == "promote", verdict.reason
    assert [c.name for c in verdict.checks] == ["canary-traffic", "canary-error-rate", "canary-p99-latency",
                                                "canary-output-shift", "canary-agreement"]
    move, report = canary.finish(ws2, verdict)
    assert (move.alias, move.from_version, move.to_version) == ("production", before, v2.version)
    assert ws.registry.aliases("churn") == {"production": v2.version}  # canary cleared in the same step
    assert [(c.alias, c.from_version) for c in move.cleared] == [("canary", v2.version)]
    sync_serving(ws, "churn")
    assert ws.serving.status()["traffic"] == {str(v2.version): 1.0} and traffic.failed == 0
    last = ws.registry.history("churn")[-1]
    assert last.actor == "loopml-canary" and "canary passed" in last.reason and report in last.reason
    assert "PROMOTE" in ws.store.get(report).decode()
    from loopml.cli import main  # the canary's report, fetched by command like any other

    assert main(["reports", "show", f"churn:{v2.version}", "--kind", "canary", "--config", str(config),
                 "--profile", "ci"]) == 0
    assert (config.parent / ".loopml" / "reports" / report.rsplit("/", 1)[-1]).is_file()
    kinds = [c[1]["event"].kind for c in recorder.calls if c[0] == "loopml_on_event"]
    judged_and_moved = [k for k in kinds if k not in (events.DATASET_VERSIONED, events.TRAINED)]  # trained: cache
    assert judged_and_moved == [events.VALIDATED, events.REGISTERED, events.CANARY_STARTED, events.PROMOTED,
                                events.CLEARED]
    assert all(c[1]["event"].project == ws.config.project for c in recorder.calls if c[0] == "loopml_on_event")


def test_a_canary_that_fails_its_slo_is_rolled_back_and_rejected(config: Path, served) -> None:
    ws, url, rows = served
    strict = open_ws(config, ws, training={"seed": 8}, rollout={"max_output_shift": 0.0})  # any change fails
    v3, event = train_and_register(strict)
    assert event is not None and event.alias == "canary"
    sync_serving(strict, "churn")
    verdict = judged(strict, TrafficGenerator(url, rows))
    assert verdict.decision == "rollback" and "canary-output-shift" in verdict.reason
    move, _ = canary.finish(strict, verdict)
    production = strict.registry.aliases("churn")["production"]
    assert (move.alias, move.action, move.from_version, move.to_version) == ("canary", "clear", v3.version, None)
    assert strict.registry.aliases("churn") == {"production": production}  # no alias that no traffic follows
    assert strict.registry.get("churn", v3.version).status == "rejected"
    sync_serving(strict, "churn")
    assert strict.serving.status()["traffic"] == {str(production): 1.0}
    assert canary.active(strict, "churn") is None
    monitor_log = (config.parent / ".loopml" / "monitoring" / "events.jsonl").read_text()
    assert '"action": "clear"' in monitor_log and '"kind": "loopml.model.rolled-back"' in monitor_log


def test_shadow_mode_mirrors_requests_without_changing_answers(config: Path, served) -> None:
    ws, url, rows = served
    shadow = open_ws(config, ws, training={"seed": 9}, rollout={"mode": "shadow", "min_requests": 150})
    v4, event = train_and_register(shadow)
    assert event is not None and event.alias == "canary"
    sync_serving(shadow, "churn")
    status = shadow.serving.status()
    production = shadow.registry.aliases("churn")["production"]
    assert status["traffic"] == {str(production): 1.0} and status["shadow"] == v4.version
    traffic = TrafficGenerator(url, rows)
    verdict = judged(shadow, traffic)
    assert set(traffic.versions) == {production}  # every answer came from production
    assert verdict.arms[1].rows >= 150 and verdict.disagreement is not None
    assert any(c.name == "shadow-disagreement" for c in verdict.checks)
    window = prediction_window(shadow, "churn", since=verdict.started_at)
    assert set(window.versions) == {production}  # drift and monitors never see the mirrored copies
    canary.finish(shadow, verdict)
    sync_serving(shadow, "churn")
    assert shadow.serving.status()["shadow"] is None


def test_delayed_labels_give_live_performance_and_a_degraded_verdict(config: Path, served) -> None:
    ws, url, _ = served
    data = churn.generate(2000, seed=0)
    # Clients send each customer's features with its id (churners have no fresh online features).
    rows = churn.request_rows(data, ("customer_id", *view_of(ws).features))[:400]
    since = time.time()
    traffic = TrafficGenerator(url, rows)
    traffic.send(len(rows))
    assert traffic.failed == 0, traffic.errors[:3]
    later = pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=2)  # the outcome is known two hours later
    served_ids = [r["customer_id"] for r in rows]
    labels = data.labels.set_index("customer_id").loc[served_ids].reset_index().assign(label_timestamp=later)
    result, key = performance.live_performance(ws, labels, since=since)
    production = ws.registry.get("churn", alias="production").version
    [live] = [v for v in result.versions if v.version == production]
    assert live.labels == len(rows) and 0.6 < live.metrics["auc"] <= 1.0 and not result.degraded, result.reason
    assert ws.store.exists(key)
    flipped = labels.assign(churned=1 - labels["churned"])  # a world where the model is now wrong
    worse, _ = performance.live_performance(ws, flipped, since=since)
    assert worse.degraded and "worse by" in worse.reason
    kinds = [e.get("kind") for e in _events(config) if e["event"] == "event"]
    assert events.DEGRADED in kinds


def _events(config: Path) -> list[dict]:
    import json

    path = config.parent / ".loopml" / "monitoring" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_serving_by_entity_id_shows_no_skew_and_no_drift_alarm_on_the_example(config: Path, served) -> None:
    ws, url, _ = served
    ids = churn.generate(2000, seed=0).labels["customer_id"].sample(800, random_state=1).tolist()
    online = ws.feature_store.online_features(view_of(ws).name, ids)
    ids = [i for i, ok in zip(ids, online["tenure_months"].notna(), strict=True) if ok][:400]
    assert len(ids) == 400  # customers still active (churners' features expired with the view's ttl)
    since = time.time()
    TrafficGenerator(url, [{"customer_id": int(i)} for i in ids]).send(len(ids))
    window = prediction_window(ws, "churn", since=since)
    rows = performance.skew(ws, window.records)
    assert {s.feature for s in rows} == set(view_of(ws).features)
    # The example's data ends in 2025: at request time (now) every served value is older than the
    # view's 45-day ttl. That is reported (stale), and no fresh value was served differently.
    assert all(s.stale == 1.0 and s.online_vs_offline == 0.0 for s in rows), rows
    assert all(s.training_rows > 300 for s in rows)
    calls = next(s for s in rows if s.feature == "support_calls")
    assert abs(calls.serving_vs_training) < 0.2, calls  # no post-churn artefact in the latest snapshot
    model = production_model(ws, "churn")
    report, _, alert = check_drift(ws, drift_reference(ws, model), window.inputs, "training",
                                        production_version=model.version, outputs=window.outputs)
    assert not report.drift_detected and not alert, report.reason



def test_a_passed_canary_under_an_approval_policy_keeps_serving_until_someone_approves(config: Path, served) -> None:
    from loopml import approvals

    ws, url, rows = served
    governed = Workspace.open(config, profile="ci", overrides={"pipeline": {"training": {"seed": 9}},
                                                                "approvals": {"production": 1}})
    governed.__dict__["serving"] = ws.serving
    try:
        before = governed.registry.aliases("churn")["production"]
        candidate, event = train_and_register(governed)
        assert event is not None and event.alias == "canary"  # the canary alias is not governed
        sync_serving(governed, "churn")
        verdict = judged(governed, TrafficGenerator(url, rows))
        assert verdict.decision == "promote", verdict.reason
        move, report = canary.finish(governed, verdict)
        assert move is None and governed.store.exists(report)  # judged and reported, but production waits
        assert governed.registry.aliases("churn") == {"production": before, "canary": candidate.version}
        waiting = approvals.pending_for(governed, candidate)
        assert waiting is not None and waiting.alias == "production" and waiting.requested_by == canary.ACTOR
        made, move = approvals.decide(governed, waiting.id, "approve", reason="canary report read", actor="reviewer")
        assert made.state == "promoted" and (move.from_version, move.to_version) == (before, candidate.version)
        assert governed.registry.aliases("churn") == {"production": candidate.version}  # canary cleared with it
        sync_serving(governed, "churn")
        assert governed.serving.status()["traffic"] == {str(candidate.version): 1.0}
    finally:
        governed.registry.apply_policy({"production": 0}, actor="test")  # the other tests promote freely
