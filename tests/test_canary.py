"""The canary judge on synthetic prediction-log records: every check, and the incremental window."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from loopml.canary import CanaryWindow, judge
from loopml.config import RolloutConfig


def rows(version: int, n: int, *, score: float = 0.3, spread: float = 0.2, latency: float = 1.0,
         errors: int = 0, shadow: bool = False, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = [{"ts": 1.0, "version": version, "output": min(max(score + rng.uniform(-spread, spread), 0), 1),
            "latency_ms": latency, **({"shadow": True} if shadow else {})} for _ in range(n)]
    out += [{"ts": 1.0, "version": version, "error": "RuntimeError", **({"shadow": True} if shadow else {})}
            for _ in range(errors)]
    return out


def verdict(records: list[dict], deadline: bool = False, **policy: object):
    return judge(records, model="churn", candidate=2, production=1, task="binary",
                 policy=RolloutConfig(min_requests=100, **policy), latency_floor_ms=5.0, started_at=0.0,
                 deadline_passed=deadline, now=60.0)


def test_too_little_traffic_waits_until_the_deadline_then_rolls_back() -> None:
    records = rows(1, 500) + rows(2, 40, seed=1)
    assert verdict(records).decision == "wait"
    late = verdict(records, deadline=True)
    assert late.decision == "rollback" and "not enough traffic" in late.reason and "40 rows on v2" in late.reason


def test_a_healthy_canary_is_promoted_with_every_check_passed() -> None:
    v = verdict(rows(1, 900) + rows(2, 120, seed=1))
    assert v.decision == "promote", v.reason
    assert [c.name for c in v.checks if c.passed] == ["canary-traffic", "canary-error-rate", "canary-p99-latency",
                                                      "canary-output-shift"]


@pytest.mark.parametrize(("candidate", "failed"), [
    (rows(2, 120, errors=5, seed=1), "canary-error-rate"),                  # 4% of its rows fail
    (rows(2, 120, latency=12.0, seed=1), "canary-p99-latency"),            # 12x slower, above the 5 ms floor
    (rows(2, 120, score=0.95, spread=0.02, seed=1), "canary-output-shift"),  # answers near-constant and high
])
def test_a_canary_failing_one_slo_is_rolled_back_naming_it(candidate: list[dict], failed: str) -> None:
    v = verdict(rows(1, 900) + candidate)
    assert v.decision == "rollback" and [c.name for c in v.checks if not c.passed] == [failed], v.reason
    assert failed in v.reason


def test_slow_but_under_the_latency_floor_is_not_a_failure() -> None:
    v = verdict(rows(1, 900, latency=0.2) + rows(2, 120, latency=1.5, seed=1))  # 7.5x, but 1.5 ms < 5 ms
    assert v.decision == "promote", v.reason


def test_shadow_judges_the_mirrored_rows_and_their_disagreement() -> None:
    prod = rows(1, 300)
    mirrored = [{**r, "version": 2, "shadow": True, "primary_output": r["output"],
                 "output": 1 - r["output"] if i % 3 == 0 else r["output"]} for i, r in enumerate(prod)]
    v = verdict(prod + mirrored, mode="shadow", max_output_shift=1.0)
    assert v.arms[1].rows == 300 and v.disagreement == pytest.approx(100 / 300, abs=0.02)
    assert v.decision == "rollback" and "shadow-disagreement" in v.reason
    agree = [{**r, "output": r["primary_output"]} for r in mirrored]
    assert verdict(prod + agree, mode="shadow").decision == "promote"


def test_the_window_reads_only_what_was_appended(tmp_path: Path) -> None:
    log = tmp_path / "churn.jsonl"
    serving = SimpleNamespace(prediction_log_dir=tmp_path)  # a backend with no optional ability
    ws = SimpleNamespace(serving=serving, selected={"serving": None}, ability=lambda backend, ability: None)
    window = CanaryWindow(ws, "churn", since=10.0)
    with open(log, "a") as out:
        for ts in (5.0, 11.0, 12.0):  # the first is from before the canary started
            out.write(json.dumps({"ts": ts, "version": 1, "output": 0.5, "inputs": {"x": 1}}) + "\n")
        out.write('{"ts": 13.0, "version": 2')  # a writer is still writing this line
    assert [r.get("output") for r in window.read()] == [0.5, 0.5]
    assert set(window.records[0]) == {"version", "output", "inputs"}  # what the judge needs (inputs: agreement)
    with open(log, "a") as out:
        out.write(', "output": 0.7}\n')
    assert [r["version"] for r in window.read()] == [1, 1, 2]
    assert len(window.read()) == 3  # nothing new: nothing read twice


def test_one_routing_rule_for_every_server_that_follows_the_registry() -> None:
    from loopml.records import Rollout
    from loopml.serving.reconcile import routing_for

    assert routing_for({}) == ({}, None)  # nothing promoted yet: nothing to serve
    assert routing_for({"production": 1}) == ({1: 1.0}, None)
    canary, shadow = Rollout("canary", 0.25), Rollout("shadow")
    assert routing_for({"production": 2, "canary": 2}, canary) == ({2: 1.0}, None)  # judged: canary = production
    assert routing_for({"production": 1, "canary": 2}, canary) == ({1: 0.75, 2: 0.25}, None)
    assert routing_for({"production": 1, "canary": 2}, shadow) == ({1: 1.0}, 2)
    assert routing_for({"production": 1, "canary": 2}, None) == ({1: 1.0}, None)
    assert routing_for({"staging": 3, "canary": 4}, Rollout("canary", 0.5), main_alias="staging") == (
        {3: 0.5, 4: 0.5}, None)
