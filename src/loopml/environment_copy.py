"""Promotion across environments: a version copied from one registry and store into another.

``loopml models copy churn:3 --to prod`` copies, from the current environment (a profile, e.g.
staging: SQLite and a local store) into another (prod: PostgreSQL and S3), what the version needs to
be judged and served there: its artifact, the dataset versions it was trained and validated on, and
its gate report, each verified by sha256, then registers it with its lineage (and where it came
from) as a candidate. The target then judges it with its own gates against its own production
(:func:`loopml.stages.rejudge.rejudge`); only an approved copy may be released there, under the
target's rollout and approval policy. Copying again finds the copy (same artifact sha256) and
changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loopml.context import current_actor
from loopml.errors import IntegrityError
from loopml.scratch import copy_dataset_version
from loopml.stages.rejudge import rejudge

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import GateReport, ModelVersion


@dataclass(frozen=True)
class CopiedVersion:
    """A version as the target environment holds it after a copy."""

    source: ModelVersion
    target: ModelVersion
    created: bool  # False: the target already held this artifact (the copy changed nothing)
    report: GateReport | None  # the target's own gates (None when nothing was copied)
    report_key: str | None


def _copy_key(source: Workspace, target: Workspace, key: str, sha256: str | None = None) -> None:
    data = source.store.get(key)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"{key} in the source store does not match its recorded sha256 {sha256[:12]}…; "
                             "nothing was copied")
    if not target.store.exists(key):
        target.store.put(key, data)
    if target.store.info(key).sha256 != hashlib.sha256(data).hexdigest():
        raise IntegrityError(f"{key} in the target store differs from the source's; nothing was registered")


def copy_version(source: Workspace, target: Workspace, name: str, version: int, *,
                 source_label: str) -> CopiedVersion:
    """Copy ``name:version`` from ``source`` into ``target`` and judge it there (idempotent)."""
    model = source.registry.get(name, version)
    for held in target.registry.list_versions(name):
        if held.artifact_sha256 == model.artifact_sha256:
            return CopiedVersion(model, held, False, None, None)
    _copy_key(source, target, model.artifact_key, model.artifact_sha256)
    for ref in (model.lineage.get("datasets") or {}).values():
        copy_dataset_version(source, target, ref)
    report_key = model.lineage.get("validation_report")
    if isinstance(report_key, str) and source.store.exists(report_key):
        _copy_key(source, target, report_key, model.lineage.get("validation_report_sha256"))
    origin = {"environment": source_label, "ref": model.ref, "artifact_sha256": model.artifact_sha256}
    copied = target.registry.register(
        name, artifact_key=model.artifact_key, artifact_sha256=model.artifact_sha256, status="candidate",
        actor=current_actor(), reason=f"copied from {source_label} {model.ref}; judged here before any alias moves",
        dataset_version=model.dataset_version, git_commit=model.git_commit, run_id=model.run_id,
        params=dict(model.params), metrics=dict(model.metrics), environment=dict(model.environment),
        lineage={**model.lineage, "copied_from": origin}, description=model.description)
    judged = rejudge(target, name, copied.version)
    return CopiedVersion(model, judged.after, True, judged.report, judged.report_key)
