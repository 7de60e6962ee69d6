"""Deploy: serve the production model (canary, then all traffic, no dropped requests)."""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow, get_run_logger

from flows.common import on_failure, workspace
from loopml import loop


@flow(name="loopml-deploy", on_failure=on_failure("deploy"))
def deploy(config: str | None = None, profile: str | None = None, canary_fraction: float = 0.1,
           during_canary: Callable[[], None] | None = None) -> str | None:
    """Roll the production model out to the configured serving backend; returns its URL."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    model = loop.production_model(ws, loop.pipeline_config(ws).model_name)
    if model is None:
        logger.warning("no production model yet: nothing to deploy")
        return None
    served = ws.serving.status().get("traffic", {})
    if served == {str(model.version): 1.0}:
        logger.info("%s already serves all traffic", model.ref)
        return ws.serving.status().get("url")
    url = loop.rollout(ws, model, canary_fraction=canary_fraction, during_canary=during_canary)
    logger.info("%s serving at %s", model.ref, url)
    return url
