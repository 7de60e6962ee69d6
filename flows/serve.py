"""Serve: a long-running flow run that serves a model alias and follows the registry.

Deployed as ``loopml-serve/serve`` (deployments/prefect.yaml): the retrain-on-drift deployment
promotes a new version, and this run starts answering with it within ``poll_seconds``, without a
failed request. Cancelling the flow run stops the server gracefully (requests in flight finish).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import emits_lineage, on_failure, workspace
from loopml.serving import follower
from loopml.stages.project import pipeline_config


@flow(name="loopml-serve", on_failure=on_failure("serve"))
@emits_lineage
def serve(target: str | None = None, config: str | None = None, profile: str | None = None,
          host: str | None = None, port: int | None = None) -> None:
    """Serve ``target`` (NAME@ALIAS; default: the project's model @production) until cancelled."""
    ws = workspace(config, profile)
    target = target or f"{pipeline_config(ws).model_name}@production"
    get_run_logger().info("serving %s; promotions and rollbacks are followed from the registry", target)
    follower.serve(ws, target, host=host, port=port)
