"""One event spine: every lifecycle fact is one LoopEvent, and the specific hook derives from it.

Driven as a notebook would, with the stages and no Prefect flow, so a hook that only a flow fired
(``loopml_after_validation`` once was) would be missing here."""

from __future__ import annotations

from pathlib import Path

import pytest
from loop_steps import train_and_validate

from loopml import events
from loopml.context import Workspace
from loopml.examples import churn
from loopml.stages.release import register_and_promote
from loopml.testing import HookRecorder

DERIVED = {events.DATASET_VERSIONED: "loopml_after_dataset_versioned", events.TRAINED: "loopml_after_model_trained",
           events.VALIDATED: "loopml_after_validation", events.REGISTERED: "loopml_after_model_registered",
           events.PROMOTED: "loopml_after_promotion"}


@pytest.mark.training
def test_each_fact_is_one_event_and_fires_its_specific_hook_once(tmp_path: Path) -> None:
    churn.init_project(tmp_path, n_customers=800, seed=3)
    ws = Workspace.open(tmp_path / "loopml.toml", profile="ci")
    recorder = HookRecorder()
    ws.manager.register(recorder, "recorder")
    try:
        candidate, evaluation, key, baseline = train_and_validate(ws)
        model, move = register_and_promote(ws, candidate, evaluation.report, key, baseline)
    finally:
        ws.manager.unregister("recorder")
    assert move is not None and move.alias == "production"
    kinds = [c["event"].kind for c in recorder.named("loopml_on_event")]
    assert kinds == [events.DATASET_VERSIONED, events.DATASET_VERSIONED, events.TRAINED, events.VALIDATED,
                     events.REGISTERED, events.PROMOTED]
    specific = [name for name, _ in recorder.calls if name != "loopml_on_event"]
    assert specific == [DERIVED[k] for k in kinds]  # derived one for one, in the same order
    (validated,) = recorder.named("loopml_after_validation")
    assert validated["report"] is evaluation.report  # fired by the stage itself: no flow ran
    on_event = {c["event"].kind: c["event"] for c in recorder.named("loopml_on_event")}
    assert on_event[events.VALIDATED].version is None  # judged before it had a registry version
    assert on_event[events.VALIDATED].payload["report"] == key
    assert on_event[events.REGISTERED].version == model.version == 1
    assert on_event[events.TRAINED].payload["run_id"] == candidate.run_id
    datasets = [c["event"] for c in recorder.named("loopml_on_event") if c["event"].kind == events.DATASET_VERSIONED]
    assert {e.resource_id for e in datasets} == {f"loopml.dataset.{ws.config.project}.activity",
                                                 f"loopml.dataset.{ws.config.project}.labels"}


def test_a_monitor_hears_promotions_and_every_event_through_the_same_dispatcher(tmp_path: Path) -> None:
    (tmp_path / "loopml.toml").write_text('project = "spine"\n')
    ws = Workspace.open(tmp_path / "loopml.toml")
    heard: list[tuple[str, object]] = []

    class Listening:
        name = "listening"

        def observe(self, *args: object) -> None: ...
        def on_drift(self, report: object) -> None: heard.append(("on_drift", report))
        def on_promotion(self, event: object) -> None: heard.append(("on_promotion", event))
        def on_event(self, event: object) -> None: heard.append(("on_event", event))

    class Deaf(Listening):
        name = "deaf"
        on_event = None  # no optional verb: only the kind's own verbs

    ws.monitors = [Listening(), Deaf()]  # type: ignore[misc]
    ws.registry.register("m", artifact_key="k", artifact_sha256="0" * 64, status="approved", actor="t", reason="r",
                         dataset_version="d@1", git_commit="c", run_id="r", params={}, metrics={}, environment={},
                         lineage={})
    move = ws.registry.set_alias("m", "production", 1, expected=None, actor="t", reason="first")
    events.announce(ws, events.promotion_event(ws, move), subject=move)
    assert [name for name, _ in heard] == ["on_promotion", "on_event", "on_promotion"]
    assert heard[0][1] is move and heard[1][1].kind == events.PROMOTED
