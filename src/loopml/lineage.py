"""Lineage you can ask, both ways: what went into a model version, and what a dataset version went into.

Everything here is read from what the loop already records: the registry's versions (their
``lineage``: dataset versions, feature view, fingerprint, gate report, commit), its append-only
history (who registered, promoted, rolled back, and when) and the dataset manifests in the store
(source files with their sha256). Nothing is inferred.

* :func:`model_lineage`: source files -> dataset versions -> feature view -> training run and code
  -> gate report -> history -> the aliases it holds and the windows it served under each.
* :func:`dataset_impact`: every model version built on a dataset version, which of them are live,
  and what to do about it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from loopml.errors import DatasetNotFoundError

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import DatasetVersion, HistoryEntry, ModelVersion

LIVE_ALIASES = ("production", "canary", "shadow")


@dataclass(frozen=True)
class SourceFile:
    path: str
    sha256: str
    rows: int


@dataclass(frozen=True)
class DatasetNode:
    role: str
    ref: str
    id: str
    rows: int
    created_at: datetime | None
    sources: tuple[SourceFile, ...]
    found: bool = True


@dataclass(frozen=True)
class ServedWindow:
    """A span during which an alias pointed at the version (``until`` None: it still does)."""

    alias: str
    since: datetime
    until: datetime | None
    by: str


@dataclass(frozen=True)
class Event:
    at: datetime
    action: str
    alias: str | None
    actor: str
    reason: str


@dataclass(frozen=True)
class ModelLineage:
    ref: str
    status: str
    datasets: tuple[DatasetNode, ...]
    feature_view: str | None
    features: tuple[str, ...]
    run_id: str | None
    fingerprint: str | None
    git_commit: str | None
    git_dirty: bool | None
    environment: dict[str, str]
    validation_report: str | None
    gates: dict[str, Any]
    history: tuple[Event, ...]
    aliases: tuple[str, ...]
    served: tuple[ServedWindow, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImpactedModel:
    ref: str
    status: str
    role: str
    aliases: tuple[str, ...]

    @property
    def live(self) -> bool:
        return any(a in LIVE_ALIASES for a in self.aliases)


@dataclass(frozen=True)
class Impact:
    dataset: DatasetNode
    models: tuple[ImpactedModel, ...]
    advice: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["models"] = [{**asdict(m), "live": m.live} for m in self.models]
        return out


def _node(ws: Workspace, role: str, ref: str) -> DatasetNode:
    try:
        version: DatasetVersion = ws.datasets.get(ref)
    except DatasetNotFoundError:
        return DatasetNode(role, ref, ref.split("@", 1)[-1], 0, None, (), found=False)
    files = tuple(SourceFile(str(f.get("path", "")), str(f.get("sha256", "")), int(f.get("rows", 0)))
                  for f in version.source.get("files", ()))
    return DatasetNode(role, version.ref, version.id, version.row_count, version.created_at, files)


def served_windows(history: list[HistoryEntry], version: int) -> tuple[ServedWindow, ...]:
    """When each alias pointed at ``version``, from the alias moves in the history (oldest first)."""
    windows: list[ServedWindow] = []
    open_since: dict[str, tuple[datetime, str]] = {}
    for entry in sorted(history, key=lambda e: e.id):
        if entry.alias is None:
            continue
        if entry.alias in open_since and entry.to_version != version:
            since, by = open_since.pop(entry.alias)
            windows.append(ServedWindow(entry.alias, since, entry.at, by))
        if entry.to_version == version and entry.alias not in open_since:
            open_since[entry.alias] = (entry.at, entry.actor)
    windows += [ServedWindow(alias, since, None, by) for alias, (since, by) in open_since.items()]
    return tuple(sorted(windows, key=lambda w: w.since))


def model_lineage(ws: Workspace, name: str, version: int) -> ModelLineage:
    model: ModelVersion = ws.registry.get(name, version)
    lineage = dict(model.lineage)
    datasets = tuple(_node(ws, role, ref) for role, ref in sorted((lineage.get("datasets") or {}).items()))
    history = ws.registry.history(name)
    mine = tuple(Event(e.at, e.action, e.alias, e.actor, e.reason) for e in history
                 if e.to_version == version or (e.from_version == version and e.action == "rollback"))
    aliases = tuple(sorted(a for a, v in ws.registry.aliases(name).items() if v == version))
    return ModelLineage(model.ref, model.status, datasets, lineage.get("feature_view"),
                        tuple(lineage.get("features", ())), model.run_id, lineage.get("fingerprint"),
                        model.git_commit, lineage.get("git_dirty"), dict(model.environment),
                        lineage.get("validation_report"), dict(lineage.get("gates") or {}), mine, aliases,
                        served_windows(history, version))


def dataset_impact(ws: Workspace, ref: str) -> Impact:
    """Every registered version trained on dataset version ``ref`` (``name@id``; an id prefix works)."""
    version = ws.datasets.get(ref)
    node = _node(ws, "", version.ref)
    impacted: list[ImpactedModel] = []
    alias_cache: dict[str, dict[str, int]] = {}
    for model in ws.registry.list_versions():
        for role, used in (model.lineage.get("datasets") or {}).items():
            if used.split("@", 1)[0] == version.name and version.id.startswith(used.split("@", 1)[-1]):
                aliases = alias_cache.setdefault(model.name, ws.registry.aliases(model.name))
                held = tuple(sorted(a for a, v in aliases.items() if v == model.version))
                impacted.append(ImpactedModel(model.ref, model.status, role, held))
    return Impact(node, tuple(impacted), _advice(ws, version, impacted))


def _advice(ws: Workspace, version: DatasetVersion, impacted: list[ImpactedModel]) -> tuple[str, ...]:
    if not impacted:
        return (f"no registered model was trained on {version.ref}",)
    tainted = {m.ref for m in impacted}
    advice = []
    for model in (m for m in impacted if m.live):
        name = model.ref.split(":", 1)[0]
        clean = [v for v in ws.registry.list_versions(name) if v.ref not in tainted and v.status == "approved"]
        fallback = max(clean, key=lambda v: v.version, default=None)
        current = model.ref.rsplit(":v", 1)[-1]
        for alias in (a for a in model.aliases if a in LIVE_ALIASES):
            step = (f"move {name}@{alias} to v{fallback.version}, the newest approved version not built on it: "
                    f"loopml models promote {name}:{fallback.version} --alias {alias} --expected {current}"
                    if fallback is not None else f"no approved version of {name} was built without it")
            advice.append(f"{model.ref} is live as {alias}: {step}; or retrain on a corrected "
                          f"{version.name} version (`loopml run` once the data is fixed)")
    if not advice:
        advice.append(f"none of the {len(impacted)} model version(s) built on {version.ref} is live; "
                      "retrain before promoting any of them")
    return tuple(advice)
