"""Deploy: serve what the registry says (production, plus a canary), judge the canary, serve the winner."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.canary import judge_canary
from flows.common import emits_lineage, label_run, on_failure, runs_stages, workspace
from loopml import canary
from loopml.stages.deploy import sync_serving
from loopml.stages.project import pipeline_config


@flow(name="loopml-deploy", on_failure=on_failure("deploy"))
@emits_lineage
@runs_stages
def deploy(config: str | None = None, profile: str | None = None,
           judge: bool = False) -> tuple[str | None, str | None]:
    """Serve the production model on the configured backend. If a canary is active, serve it too
    (share or shadow); with ``judge``, wait for live traffic to judge it and serve the winner.

    Returns (serving URL, canary decision: promote, rollback, running, or None). No request is
    dropped at any step."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    name = pipeline_config(ws).model_name
    label_run(ws, f"deploy-{name}", model=name)
    url = sync_serving(ws, name)
    if url is None:
        logger.warning("no production model yet: nothing to deploy")
        return None, None
    logger.info("serving %s at %s: %s", name, url, ws.serving.status().get("traffic"))
    decision = None
    if canary.active(ws, name) is not None and not judge:
        logger.info("the canary is served next to production; judge it with `loopml models canary %s --watch` "
                    "(or the loopml-canary flow) while clients send traffic", name)
        return url, "running"
    if canary.active(ws, name) is not None:
        verdict = judge_canary(config=config, profile=profile, poll_seconds=0.5)
        decision = verdict.decision if verdict else None
        url = sync_serving(ws, name)
        logger.info("after the canary, %s serves %s", name, ws.serving.status().get("traffic"))
    return url, decision
