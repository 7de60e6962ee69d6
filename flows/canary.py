"""Canary: judge the candidate serving next to production, then promote it or roll it back."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import emits_lineage, label_run, on_failure, publish_markdown, report_link, save_report, workspace
from loopml import approvals, canary
from loopml.reports import checks_markdown
from loopml.serving.reconcile import policy_of
from loopml.stages.project import pipeline_config


@flow(name="loopml-canary", on_failure=on_failure("canary"))
@emits_lineage
def judge_canary(config: str | None = None, profile: str | None = None,
                 poll_seconds: float = 5.0) -> canary.CanaryVerdict | None:
    """Watch the active canary (alias ``canary`` ≠ ``production``) until it is decided.

    Whoever serves the model (``loopml serve``, the ``serve`` deployment, the in-process server)
    gives the canary its share of traffic; this flow reads the prediction log, judges, and moves
    the aliases. Returns None when no canary is active."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    name = pipeline_config(ws).model_name
    active = canary.active(ws, name)
    label_run(ws, f"canary-{name}" + (f"-v{active.candidate}" if active is not None else ""), model=name)
    if active is None:
        logger.info("no canary of %s is active", name)
        return None
    policy = policy_of(ws)
    logger.info("judging %s v%s (%s) next to production v%s: %d rows each, at most %g minutes",
                name, active.candidate, policy.mode, active.production, policy.min_requests, policy.max_wait_minutes)
    seen: list[int] = []

    def waiting(verdict: canary.CanaryVerdict) -> None:
        rows = verdict.arms[1].rows
        if not seen or rows - seen[-1] >= max(policy.min_requests // 4, 1):
            seen.append(rows)
            logger.info("canary so far: %s", verdict.reason)

    verdict = canary.watch(ws, name, poll_seconds=poll_seconds, on_wait=waiting)
    if verdict is None:
        logger.warning("the canary of %s ended before it was judged (aliases moved by someone else)", name)
        return None
    key = canary.store_report(ws, verdict)
    save_report(ws, key, ws.store.get(key).decode())
    rows = "\n".join(checks_markdown(verdict.checks, limit="limit"))
    publish_markdown(f"{name}-canary", f"# Canary of {name} v{verdict.candidate}: {verdict.decision.upper()}\n\n"
                     f"{verdict.reason}\n\n{rows}"
                     f"\n\nReport with plots: {report_link(ws, key, f'{name}-canary-report', 'canary report')}",
                     "canary verdict")
    (logger.info if verdict.decision == "promote" else logger.warning)(
        "%s v%s: %s", name, verdict.candidate, verdict.reason)
    waiting = approvals.pending_for(ws, ws.registry.get(name, verdict.candidate)) \
        if verdict.decision == "promote" else None
    if waiting is not None:
        logger.warning("%s v%s passed its canary and awaits approval to become production (request %d); the "
                       "canary keeps serving until then", name, verdict.candidate, waiting.id)
    return verdict
