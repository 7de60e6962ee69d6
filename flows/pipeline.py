"""The whole loop: ingest, features, train, validate, register, deploy."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.canary import judge_canary
from flows.common import emits_lineage, label_run, runs_stages, workspace
from flows.deploy import deploy
from flows.features import features
from flows.ingest import ingest
from flows.register import register
from flows.train import train
from flows.validate import validate
from loopml import approvals, canary
from loopml.records import PipelineResult
from loopml.stages.project import pipeline_config, production_model
from loopml.stages.release import registered_version_of


@flow(name="loopml-pipeline", log_prints=True)
@emits_lineage
@runs_stages
def pipeline(config: str | None = None, profile: str | None = None,
             deploy_model: bool = True, trainer: Any = None, await_canary: bool = False,
             retrain: str | None = None) -> PipelineResult:
    """Version the data, train, validate against production, register, then roll out.

    When a production model exists, an approved candidate becomes a canary first
    (``[pipeline.rollout]``). With ``await_canary`` the run waits for live traffic and judges it:
    on this process's server with ``deploy_model``, else on whatever serves the model (the
    ``serve`` deployment, ``loopml serve``), read from the prediction log. Otherwise the canary
    stays active (``decision = "running"``) for ``loopml models canary NAME --watch`` or a later
    ``loopml-canary`` run.

    ``trainer`` (ad hoc, from Python) replaces the configured one: a Trainer object or a factory
    ``build(signature) -> nn.Module``. ``retrain`` (why) trains even when the inputs are unchanged;
    training is deterministic, so unchanged inputs give the same model, which the result says."""
    logger = get_run_logger()
    ws = workspace(config, profile)
    cfg = pipeline_config(ws)
    label_run(ws, f"pipeline-{cfg.model_name}", model=cfg.model_name)
    versions = ingest(config=config, profile=profile)
    labels, feature_rows = versions[cfg.labels_dataset], versions[cfg.features.dataset]
    logger.info("data: %s", ", ".join(f"{v.ref} ({v.row_count} rows)" for v in versions.values()))
    features(feature_rows, config=config, profile=profile)
    candidate = train(labels, feature_rows, config=config, profile=profile, trainer=trainer, retrain=retrain)
    logger.info("candidate %s %s: %s", candidate.fingerprint[:8], "reused (inputs unchanged)" if candidate.skipped
                else "trained", ", ".join(f"{k}={v:.4f}" for k, v in sorted(candidate.metrics.items())))
    existing = registered_version_of(ws, candidate) if candidate.skipped or retrain else None
    if existing is not None:
        logger.info("%s%s already holds this model (%s); nothing to validate or register%s",
                    "retrained as asked, and the same inputs gave the same bytes (training is deterministic: "
                    "change the data, code, parameters or seed for another model): " if retrain else "",
                    existing.ref, existing.status,
                    f". Gates changed? Judge it again without retraining: loopml validate "
                    f"{existing.name}:{existing.version}" if existing.status == "rejected" else "")
        url, decision = deploy(config=config, profile=profile, judge=await_canary) if deploy_model else (None, None)
        production = production_model(ws, cfg.model_name)
        failed = tuple(n for n, g in (existing.lineage.get("gates") or {}).items() if not g.get("passed"))
        return PipelineResult(existing.ref, existing.status,
                              production is not None and production.version == existing.version,
                              candidate.skipped, existing.lineage.get("validation_report"), failed, url, decision)
    baseline = production_model(ws, cfg.model_name)
    report, key, path = validate(candidate, labels, config=config, profile=profile)
    logger.info("validation %s against %s: %s", "passed" if report.passed else "FAILED",
                f"production v{baseline.version}" if baseline else "no production model",
                "; ".join(f"{c.name} {'ok' if c.passed else 'FAIL'}" for c in report.checks))
    model, event = register(candidate, report, key, baseline.version if baseline else None,
                            config=config, profile=profile)
    label_run(ws, f"pipeline-{model.name}-v{model.version}", model=model.name, version=f"v{model.version}")
    logger.info("registered %s (%s)%s", model.ref, model.status,
                f"; {event.alias} -> v{event.to_version}" if event else "; production unchanged")
    url, decision = deploy(config=config, profile=profile, judge=await_canary) if deploy_model else (None, None)
    if event is not None and event.alias == canary.CANARY and not deploy_model:
        if await_canary:
            verdict = judge_canary(config=config, profile=profile)
            decision = verdict.decision if verdict else None
        else:
            decision = "running"
            logger.info("%s is the canary; run the loopml-canary flow while it is served", model.ref)
    model = ws.registry.get(model.name, model.version)
    production = production_model(ws, cfg.model_name)
    promoted = production is not None and production.version == model.version
    waiting = None if promoted else approvals.pending_for(ws, model)
    if waiting is not None:
        logger.warning("%s awaits approval to become %s (request %d): someone other than whoever trained or "
                       "requested it runs `loopml models approve %d`", model.ref, waiting.alias, waiting.id, waiting.id)
    return PipelineResult(model.ref, model.status, promoted, candidate.skipped, path,
                          tuple(c.name for c in report.failed_checks), url, decision,
                          waiting.id if waiting is not None else None)


if __name__ == "__main__":
    print(pipeline())
