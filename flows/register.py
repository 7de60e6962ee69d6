"""Register: record the candidate with lineage; promote it through compare-and-set if it passed."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import emits_lineage, label_run, on_failure, workspace
from loopml import approvals
from loopml.records import GateReport, ModelVersion, PromotionEvent
from loopml.stages.project import production_model
from loopml.stages.release import register_and_promote
from loopml.stages.training import Candidate


@flow(name="loopml-register", on_failure=on_failure("register"))
@emits_lineage
def register(candidate: Candidate, report: GateReport, report_key: str,
             baseline_version: int | None, config: str | None = None,
             profile: str | None = None) -> tuple[ModelVersion, PromotionEvent | None]:
    logger = get_run_logger()
    model, event = register_and_promote(workspace(config, profile), candidate, report,
                                             report_key, baseline_version)
    label_run(workspace(config, profile), f"register-{model.name}-v{model.version}", model=model.name,
              version=f"v{model.version}")
    if event and event.alias == "canary":
        logger.info("%s approved: canary next to production v%s before production moves", model.ref,
                    production_model(workspace(config, profile), model.name).version)
    elif event:
        logger.info("%s is now production (was v%s)", model.ref, event.from_version or "-")
    elif (waiting := approvals.pending_for(workspace(config, profile), model)) is not None:
        logger.warning("%s passed its gates and awaits approval (request %d, %d needed); production unchanged",
                       model.ref, waiting.id, waiting.required)
    else:
        logger.warning("%s registered as %s; production unchanged", model.ref, model.status)
    return model, event
