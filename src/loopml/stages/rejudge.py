"""Re-judge a registered version against today's gates and today's production, without retraining.

After a rejection, a team may decide a gate was wrong (a fairness threshold in the target's unit, a
latency SLO for another machine) and change it. Retraining would produce the same bytes (training
is deterministic and cached by fingerprint), so an unchanged ``loopml run`` only says the version
exists. ``loopml validate NAME:VERSION`` runs every gate again on the holdout of the version's own
recorded data (joined in a scratch workspace, so the served online store is not touched), stores a
new report, and moves the version's status when the verdict changed, with the reason in the history.
Promotion stays a separate, explicit step.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loopml.context import current_actor
from loopml.errors import LoopmlError
from loopml.scratch import copy_dataset_version, scratch_workspace
from loopml.stages.data import apply_features
from loopml.stages.training import Candidate
from loopml.stages.validation import validate

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import GateReport, ModelVersion


@dataclass(frozen=True)
class Rejudgement:
    before: ModelVersion
    after: ModelVersion
    report: GateReport
    report_key: str

    @property
    def changed(self) -> bool:
        return self.before.status != self.after.status

    def describe(self) -> str:
        verdict = "passes" if self.report.passed else "fails " + ", ".join(c.name for c in self.report.failed_checks)
        move = (f"status {self.before.status} -> {self.after.status}" if self.changed
                else f"status stays {self.after.status}")
        hint = (f"; promote it with: loopml models promote {self.after.name}:{self.after.version}"
                if self.changed and self.after.status == "approved" else "")
        return f"{self.after.ref} {verdict} today's gates ({move}){hint}\nreport: {self.report_key}"


def rejudge(ws: Workspace, name: str, version: int) -> Rejudgement:
    model = ws.registry.get(name, version)
    datasets = dict(model.lineage.get("datasets") or {})
    if not {"labels", "features"} <= set(datasets) or ws.config.source_file is None:
        raise LoopmlError(f"{model.ref} has no recorded dataset versions: it cannot be judged on its own data")
    candidate = Candidate(name, str(model.lineage.get("fingerprint", model.artifact_sha256)), model.artifact_key,
                          model.artifact_sha256, model.run_id or "", dict(model.metrics), dict(model.params),
                          datasets, skipped=True)
    with tempfile.TemporaryDirectory(prefix="loopml-rejudge-") as tmp:
        scratch = scratch_workspace(ws.config.source_file, ws.config.profile, Path(tmp))
        labels = copy_dataset_version(ws, scratch, datasets["labels"])
        apply_features(scratch, copy_dataset_version(ws, scratch, datasets["features"]))
        evaluation, key, _ = validate(ws, candidate, labels, rows_from=scratch)
    report = evaluation.report
    after = model
    if model.status in ("approved", "rejected", "candidate"):
        after = record_verdict(ws, model, report, key, by="re-judged against today's gates")
    return Rejudgement(model, after, report, key)


def record_verdict(ws: Workspace, model: ModelVersion, report: GateReport, report_key: str, *, by: str) -> ModelVersion:
    """Move a version's status to what a new gate report says, the verdict and report in the
    history (``by``: who judged, e.g. "judged again by loopml ci"); unchanged when it already agrees."""
    status = "approved" if report.passed else "rejected"
    if status == model.status:
        return model
    verdict = "all gates passed" if report.passed else "failed " + ", ".join(c.name for c in report.failed_checks)
    return ws.registry.set_status(model.name, model.version, status, actor=current_actor(),
                                  reason=f"{by}: {verdict} (report {report_key})")
