"""A canary that decides: the candidate serves next to production, then is promoted or rolled back.

1. :func:`start` points the alias ``canary`` at an approved candidate (compare-and-set). Servers
   that follow the registry (``loopml serve``, the in-process deploy) give it ``canary_weight`` of
   live traffic, or, in shadow mode, a copy of every request whose answer is logged, not returned.
2. :func:`judge` reads the prediction log since the canary started and compares the two versions
   on the same window: error rate, p99 latency, the distribution of answers, and (shadow) how often
   the candidate disagrees with production. Too little traffic is "wait" until the deadline.
3. :func:`finish` acts on the verdict: ``production`` moves to the candidate (compare-and-set against
   the version it was judged against), or ``canary`` moves back to production and the candidate is
   marked rejected. Either way the reason is in the registry history, an HTML report and a
   ``loopml.model.promoted`` / ``loopml.model.rolled-back`` event (:mod:`loopml.events`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from loopml import approvals, events, reports
from loopml.artifacts import Predictor
from loopml.canary_agreement import MAX_ROWS, agreement
from loopml.capabilities import LogFlushingServing
from loopml.config import RolloutConfig
from loopml.context import shares_state
from loopml.errors import ApprovalRequiredError, LoopmlError, ModelNotFoundError
from loopml.predlog import LogCursor, read_since, read_store_segments, store_segments
from loopml.records import GateCheck, ModelVersion, PromotionEvent, Rollout
from loopml.reports import figure_png, img, page, table
from loopml.serving.reconcile import CANARY, PRODUCTION, policy_of, policy_rollout, rollout_of

if TYPE_CHECKING:
    from loopml.context import Workspace

log = logging.getLogger(__name__)
ACTOR = "loopml-canary"
Decision = Literal["promote", "rollback", "wait"]


@dataclass(frozen=True)
class ArmStats:
    """What one version answered during the canary window."""

    version: int
    rows: int
    errors: int
    p99_ms: float
    outputs: tuple[Any, ...] = field(repr=False)

    @property
    def error_rate(self) -> float:
        return self.errors / max(self.rows + self.errors, 1)


@dataclass(frozen=True)
class CanaryVerdict:
    """The judgement of one canary over one window of live traffic."""

    model: str
    candidate: int
    production: int
    mode: str
    decision: Decision
    reason: str
    checks: tuple[GateCheck, ...]
    arms: tuple[ArmStats, ArmStats]  # (production, candidate)
    started_at: float
    judged_at: float
    disagreement: float | None = None

    def payload(self) -> dict[str, Any]:
        prod, cand = self.arms
        return {"mode": self.mode, "candidate": self.candidate, "production": self.production,
                "decision": self.decision, "window_seconds": round(self.judged_at - self.started_at, 1),
                "checks": {c.name: {"passed": c.passed, "value": c.value, "threshold": c.threshold,
                                    "reason": c.reason} for c in self.checks},
                "rows": {"production": prod.rows, "candidate": cand.rows},
                "errors": {"production": prod.errors, "candidate": cand.errors}}


# ---------------------------------------------------------------------------- reading the window
def arm_stats(records: Sequence[Mapping[str, Any]], version: int, *, shadow: bool) -> ArmStats:
    """Rows answered (or failed) by ``version``; ``shadow`` picks the mirrored copies."""
    mine = [r for r in records if r.get("version") == version and bool(r.get("shadow")) == shadow]
    answered = [r for r in mine if "error" not in r]
    latency = np.array([float(r.get("latency_ms", 0.0)) for r in answered]) if answered else np.zeros(0)
    return ArmStats(version, len(answered), len(mine) - len(answered),
                    float(np.percentile(latency, 99)) if len(latency) else 0.0,
                    tuple(r.get("output") for r in answered))


def output_distance(task: str, production: Sequence[Any], candidate: Sequence[Any]) -> float:
    """KS distance of scores/values, or total variation distance of predicted classes."""
    if not production or not candidate:
        return 0.0
    if task == "multiclass":
        labels = sorted({*map(str, production), *map(str, candidate)})
        p = np.array([sum(str(x) == c for x in production) for c in labels], float) / len(production)
        q = np.array([sum(str(x) == c for x in candidate) for c in labels], float) / len(candidate)
        return float(0.5 * np.abs(p - q).sum())
    a = np.sort(np.asarray(production, float))
    b = np.sort(np.asarray(candidate, float))
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                               - np.searchsorted(b, grid, side="right") / len(b))))


def disagreement(task: str, pairs: Sequence[tuple[Any, Any]], production_outputs: Sequence[Any]) -> float:
    """Share of mirrored rows where the candidate's answer differs from production's."""
    if not pairs:
        return 0.0
    if task == "multiclass":
        return sum(str(c) != str(p) for c, p in pairs) / len(pairs)
    cand = np.array([c for c, _ in pairs], float)
    prod = np.array([p for _, p in pairs], float)
    if task == "binary":
        return float(np.mean((cand >= 0.5) != (prod >= 0.5)))
    ref = np.asarray(production_outputs if len(production_outputs) >= 4 else prod, float)
    iqr = float(np.subtract(*np.percentile(ref, [75, 25]))) or float(np.std(ref)) or 1.0
    return float(np.mean(np.abs(cand - prod) > 0.1 * iqr))


def _paired_answers(records: Sequence[Mapping[str, Any]], candidate: int, shadow: bool,
                    production_answers: Callable[[list[Mapping[str, Any]]], Sequence[Any]] | None) -> list[tuple]:
    """(candidate's answer, production's) on the same rows: the mirrored pairs in shadow mode, else
    the candidate's rows scored again by production (at most MAX_ROWS)."""
    mine = [r for r in records if r.get("version") == candidate and bool(r.get("shadow")) == shadow
            and "error" not in r]
    if shadow:
        return [(r.get("output"), r.get("primary_output")) for r in mine if "primary_output" in r]
    rows = [r for r in mine if isinstance(r.get("inputs"), Mapping)][-MAX_ROWS:]
    if production_answers is None or not rows:
        return []
    return list(zip([r.get("output") for r in rows], production_answers([dict(r["inputs"]) for r in rows]),
                    strict=True))


def judge(records: Sequence[Mapping[str, Any]], *, model: str, candidate: int, production: int, task: str,
          policy: RolloutConfig, latency_floor_ms: float, started_at: float, deadline_passed: bool,
          now: float | None = None,
          production_answers: Callable[[list[Mapping[str, Any]]], Sequence[Any]] | None = None) -> CanaryVerdict:
    """Compare candidate and production on the same window; see the module docstring.
    ``production_answers`` scores rows with production (for agreement on the candidate's own rows)."""
    shadow = policy.mode == "shadow"
    prod = arm_stats(records, production, shadow=False)
    cand = arm_stats(records, candidate, shadow=shadow)
    now = time.time() if now is None else now
    enough = cand.rows >= policy.min_requests and prod.rows >= policy.min_requests
    traffic = GateCheck("canary-traffic", float(cand.rows), float(policy.min_requests), enough,
                        f"{cand.rows} rows on v{candidate}, {prod.rows} on v{production} "
                        f"(need {policy.min_requests} each)")
    if not enough:
        if not deadline_passed:
            return CanaryVerdict(model, candidate, production, policy.mode, "wait", traffic.reason, (traffic,),
                                 (prod, cand), started_at, now)
        reason = (f"not enough traffic to judge in {policy.max_wait_minutes:g} minutes: {traffic.reason}")
        return CanaryVerdict(model, candidate, production, policy.mode, "rollback", reason, (traffic,),
                             (prod, cand), started_at, now)
    checks = [traffic]
    allowed = max(policy.max_error_rate, prod.error_rate + policy.max_error_rate)
    checks.append(GateCheck("canary-error-rate", cand.error_rate, allowed, cand.error_rate <= allowed,
                            f"{cand.errors} failed of {cand.rows + cand.errors} on v{candidate} "
                            f"({cand.error_rate:.2%}); production {prod.error_rate:.2%}"))
    limit = max(policy.max_p99_ratio * prod.p99_ms, latency_floor_ms)
    checks.append(GateCheck("canary-p99-latency", cand.p99_ms, limit, cand.p99_ms <= limit,
                            f"p99 {cand.p99_ms:.2f} ms vs production {prod.p99_ms:.2f} ms (limit {limit:.2f} ms: "
                            f"{policy.max_p99_ratio:g}x production, at least {latency_floor_ms:g} ms)"))
    shift = output_distance(task, prod.outputs, cand.outputs)
    checks.append(GateCheck("canary-output-shift", shift, policy.max_output_shift, shift <= policy.max_output_shift,
                            f"{'total variation' if task == 'multiclass' else 'KS distance'} {shift:.3f} between "
                            f"the answers of v{candidate} and v{production}"))
    pairs = _paired_answers(records, candidate, shadow, production_answers)
    if pairs:
        agree = agreement(task, [c for c, _ in pairs], [p for _, p in pairs])
        checks.append(GateCheck("canary-agreement", agree, policy.min_agreement, agree >= policy.min_agreement,
                                f"{'kappa' if task == 'multiclass' else 'rank correlation'} {agree:.3f} between "
                                f"v{candidate}'s answers and v{production}'s on the same {len(pairs)} rows"))
    disagree = None
    if shadow:
        pairs = [(r.get("output"), r.get("primary_output")) for r in records
                 if r.get("shadow") and r.get("version") == candidate and "error" not in r]
        disagree = disagreement(task, pairs, prod.outputs)
        checks.append(GateCheck("shadow-disagreement", disagree, policy.max_disagreement,
                                disagree <= policy.max_disagreement,
                                f"v{candidate} disagrees with v{production} on {disagree:.1%} of {len(pairs)} "
                                "mirrored rows"))
    failed = [c for c in checks if not c.passed]
    decision: Decision = "rollback" if failed else "promote"
    reason = ("canary passed: " + "; ".join(c.reason for c in checks[1:]) if not failed else
              "canary failed: " + "; ".join(f"{c.name}: {c.reason}" for c in failed))
    return CanaryVerdict(model, candidate, production, policy.mode, decision, reason, tuple(checks),
                         (prod, cand), started_at, now, disagree)


# ---------------------------------------------------------------------------- acting on the registry
def start(ws: Workspace, model: ModelVersion, *, reason: str = "") -> PromotionEvent:
    """Point ``canary`` at ``model`` (compare-and-set on what it pointed at); announce it."""
    rollout = policy_rollout(policy_of(ws))
    current = ws.registry.aliases(model.name).get(CANARY)
    event = ws.registry.set_alias(model.name, CANARY, model.version, expected=current, actor=ACTOR,
                                  reason=reason or f"{rollout.mode} next to production", rollout=rollout)
    production = ws.registry.aliases(model.name).get(PRODUCTION)
    events.announce(ws, events.make_event(
        ws, events.CANARY_STARTED, model.name, model.version,
        f"{model.ref} gets {rollout.describe()} next to v{production}",
        {"mode": rollout.mode, "canary_weight": rollout.share, "production": production}, ACTOR),
        subject=event)  # an alias moved: loopml_after_promotion and on_promotion see it too
    return event


@dataclass(frozen=True)
class ActiveCanary:
    model: str
    candidate: int
    production: int
    started_at: float
    rollout: Rollout


def active(ws: Workspace, model_name: str) -> ActiveCanary | None:
    """The canary being judged: ``canary`` names a version other than ``production``."""
    aliases = ws.registry.aliases(model_name)
    cand, prod = aliases.get(CANARY), aliases.get(PRODUCTION)
    if cand is None or prod is None or cand == prod:
        return None
    started = None
    for entry in reversed(ws.registry.history(model_name)):
        if entry.alias == CANARY and entry.to_version == cand:
            started = entry.at.timestamp()
            break
    return ActiveCanary(model_name, cand, prod, started if started is not None else time.time(),
                        rollout_of(ws, model_name))


_KEPT = ("version", "shadow", "error", "latency_ms", "output", "primary_output", "inputs")


class CanaryWindow:
    """The prediction log since a canary started, read incrementally: each :meth:`read` parses only
    what was appended since the last one (byte offsets per segment) and keeps just what the judge
    needs, so a long canary at high traffic costs one pass over its rows, not one per poll."""

    def __init__(self, ws: Workspace, model_name: str, since: float) -> None:
        self.ws, self.model_name, self.since = ws, model_name, since
        self.cursor = LogCursor()
        self.segments_read: set[str] = set()  # with a shared log: the uploaded segments already read
        self.records: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        flushing = self.ws.ability(self.ws.serving, LogFlushingServing)
        if flushing is not None:
            flushing.flush_log()
        if shares_state(self.ws):  # every replica's answers, from the store
            keys = [k for k in store_segments(self.ws.store, self.model_name) if k not in self.segments_read]
            new = read_store_segments(self.ws.store, keys, since=self.since)
            self.segments_read.update(keys)
        else:
            new, self.cursor = read_since(Path(self.ws.serving.prediction_log_dir), self.model_name, self.cursor,
                                          since=self.since)
        self.records.extend({k: r[k] for k in _KEPT if k in r} for r in new)
        return self.records


def judge_active(ws: Workspace, model_name: str, *, now: float | None = None,
                 window: CanaryWindow | None = None) -> CanaryVerdict | None:
    """Judge the active canary of ``model_name`` on the log so far (None if there is none).
    ``window`` carries what earlier polls of the same canary read."""
    canary = active(ws, model_name)
    return None if canary is None else _judge(ws, canary, window, now)


def _judge(ws: Workspace, canary: ActiveCanary, window: CanaryWindow | None, now: float | None) -> CanaryVerdict:
    # judged as it was rolled out: the mode and share recorded with the alias, not today's config
    policy = policy_of(ws).model_copy(update={"mode": canary.rollout.mode, "canary_weight": canary.rollout.share})
    now = time.time() if now is None else now
    cfg = ws.config.pipeline
    task = ws.registry.get(canary.model, canary.candidate).lineage.get("task", "binary")
    floor = cfg.gates.latency_p99_ms if cfg is not None else 25.0
    if window is None or window.since != canary.started_at:
        window = CanaryWindow(ws, canary.model, canary.started_at)
    predictor = _production_predictor(ws, canary.model, canary.production)
    return judge(window.read(), model=canary.model, candidate=canary.candidate,
                 production=canary.production, task=task, policy=policy, latency_floor_ms=floor,
                 started_at=canary.started_at,
                 deadline_passed=now - canary.started_at >= policy.max_wait_minutes * 60, now=now,
                 production_answers=lambda rows: predictor.answer(predictor.predict_rows(rows))["predictions"])


_PRODUCTION: dict[str, Predictor] = {}  # artifact sha256 -> loaded once per process, for every poll


def _production_predictor(ws: Workspace, model: str, version: int) -> Predictor:
    recorded = ws.registry.get(model, version)
    if recorded.artifact_sha256 not in _PRODUCTION:
        _PRODUCTION.clear()
        _PRODUCTION[recorded.artifact_sha256] = Predictor.from_bytes(ws.store.get(recorded.artifact_key))
    return _PRODUCTION[recorded.artifact_sha256]


def finish(ws: Workspace, verdict: CanaryVerdict) -> tuple[PromotionEvent | None, str]:
    """Promote or roll back as ``verdict`` says; returns (the alias move, the report's store key). The
    move is None when an approval policy governs production: the request awaits approval, the
    canary keeps serving."""
    if verdict.decision == "wait":
        raise LoopmlError("the canary has not been judged yet (decision 'wait')")
    report_key = store_report(ws, verdict)
    reason = f"{verdict.reason} (report {report_key})"
    payload = {**verdict.payload(), "report": report_key}
    if verdict.decision == "promote":  # production moves and the canary alias goes, in one step
        try:
            event = ws.registry.set_alias(verdict.model, PRODUCTION, verdict.candidate, expected=verdict.production,
                                          actor=ACTOR, reason=reason, clear={CANARY: verdict.candidate})
        except ApprovalRequiredError:  # the canary keeps serving until someone approves production
            approvals.request(ws, ws.registry.get(verdict.model, verdict.candidate), PRODUCTION,
                              expected=verdict.production, reason=reason, clear_canary=True, actor=ACTOR)
            return None, report_key
        events.announce_move(ws, event, payload)
        return event, report_key
    event = ws.registry.clear_alias(verdict.model, CANARY, expected=verdict.candidate, actor=ACTOR, reason=reason)
    ws.registry.set_status(verdict.model, verdict.candidate, "rejected", actor=ACTOR, reason=reason)
    events.announce_move(ws, event, payload, kind=events.ROLLED_BACK)  # the candidate is rolled back
    return event, report_key


def watch(ws: Workspace, model_name: str, *, poll_seconds: float = 5.0,
          on_wait: Callable[[CanaryVerdict], None] | None = None) -> CanaryVerdict | None:
    """Judge the active canary every ``poll_seconds`` until it is decided, then act on it."""
    window: CanaryWindow | None = None
    while True:
        try:
            canary = active(ws, model_name)
            if canary is not None and (window is None or window.since != canary.started_at):
                window = CanaryWindow(ws, model_name, canary.started_at)
            verdict = None if canary is None else _judge(ws, canary, window, None)
        except ModelNotFoundError:
            return None
        if verdict is None:
            return None
        if verdict.decision != "wait":
            finish(ws, verdict)
            return verdict
        if on_wait is not None:
            on_wait(verdict)
        time.sleep(poll_seconds)


# ---------------------------------------------------------------------------- report
def render_html(verdict: CanaryVerdict) -> str:
    prod, cand = verdict.arms
    numeric = not any(isinstance(o, str) for o in (*prod.outputs, *cand.outputs))

    def answers(ax: Any) -> None:
        if numeric and prod.outputs and cand.outputs:
            ax.hist([np.asarray(prod.outputs, float), np.asarray(cand.outputs, float)], bins=30, density=True,
                    label=[f"v{prod.version} (production)", f"v{cand.version} (candidate)"])
        else:
            labels = sorted({*map(str, prod.outputs), *map(str, cand.outputs)})
            x = np.arange(len(labels))
            for offset, arm, name in ((-0.2, prod, "production"), (0.2, cand, "candidate")):
                share = [sum(str(o) == c for o in arm.outputs) / max(len(arm.outputs), 1) for c in labels]
                ax.bar(x + offset, share, width=0.4, label=f"v{arm.version} ({name})")
            ax.set_xticks(x, labels)
        ax.set_title("answers during the canary")
        ax.legend()

    def latency(ax: Any) -> None:
        ax.bar([f"v{prod.version} production", f"v{cand.version} candidate"], [prod.p99_ms, cand.p99_ms],
               color=["tab:blue", "tab:orange"])
        ax.set_title("p99 latency per row (ms)")

    rows = [[c.name, c.value, c.threshold, "pass" if c.passed else "FAIL", c.reason] for c in verdict.checks]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(verdict.started_at))
    return page(f"Canary of {verdict.model} v{verdict.candidate}: {verdict.decision}", [
        reports.verdict(f"{verdict.decision.upper()}: {verdict.reason}", passed=verdict.decision == "promote"),
        reports.paragraph(f"{verdict.mode} of {verdict.model} v{verdict.candidate} next to production "
                          f"v{verdict.production}, from {when} for {verdict.judged_at - verdict.started_at:.0f} s. "
                          f"Rows answered {prod.rows} / {cand.rows}, failed {prod.errors} / {cand.errors} "
                          "(production / candidate)."),
        table(["check", "value", "limit", "verdict", "reason"], rows,
                       ["pass" if c.passed else "fail" for c in verdict.checks]),
        img(figure_png(answers), "answers of both versions"), img(figure_png(latency), "p99 latency")])


def store_report(ws: Workspace, verdict: CanaryVerdict) -> str:
    key = (f"reports/{verdict.model}/canary/v{verdict.candidate}-"
           f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(verdict.judged_at))}.html")
    if not ws.store.exists(key):
        ws.store.put(key, render_html(verdict).encode(), metadata={"content-type": "text/html"})
    return key
