"""Every stored report, found by model, version and kind: ``loopml reports list|show|open``.

Reports live in the artifact store (local or S3) under ``reports/<model>/...``; their keys say what
they are: ``<fingerprint>/validation-*.html`` (the gates of a candidate; the registry says which
version it became), ``canary/v<n>-*.html``, ``drift/``, ``dataset-drift/`` and ``performance/``.
Any machine that reads the store finds them, whichever machine wrote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from loopml.capabilities import LinkingStore
from loopml.errors import LoopmlError, ModelNotFoundError

if TYPE_CHECKING:
    from loopml.context import Workspace

KINDS = ("validation", "canary", "drift", "dataset-drift", "performance")
_CANARY = re.compile(r"v(\d+)-")


@dataclass(frozen=True)
class StoredReport:
    """One report in the store: what it is about and where it is."""

    key: str
    model: str
    kind: str
    version: int | None  # the model version it judged (None: a check of production over a window)
    created_at: datetime
    size: int

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def _validated_versions(ws: Workspace, model: str) -> dict[str, int]:
    """Validation report key -> the version it judged (its registration, or a later re-judgement)."""
    found: dict[str, int] = {}
    try:
        versions = ws.registry.list_versions(model)
        history = ws.registry.history(model)
    except ModelNotFoundError:
        return found
    for version in versions:
        key = version.lineage.get("validation_report")
        if isinstance(key, str):
            found[key] = version.version
    for entry in history:  # `loopml validate` names the new report in the reason
        for key in re.findall(r"reports/[^\s,;()]+\.html", entry.reason or ""):
            if entry.to_version is not None:
                found.setdefault(key, entry.to_version)
    return found


def stored_reports(ws: Workspace, model: str | None = None, *, kind: str | None = None,
                   version: int | None = None) -> list[StoredReport]:
    """The reports in the store, oldest first, filtered by model, kind and version."""
    if kind is not None and kind not in KINDS:
        raise LoopmlError(f"report kind {kind!r} is unknown; choose one of: {', '.join(KINDS)}")
    judged: dict[str, dict[str, int]] = {}
    found: list[StoredReport] = []
    for info in ws.store.list(f"reports/{model}/" if model else "reports/"):
        parts = info.key.split("/")
        if len(parts) < 4 or not parts[-1].endswith(".html"):
            continue
        owner, folder = parts[1], parts[2]
        if folder == "canary":
            report_kind, match = "canary", _CANARY.match(parts[-1])
            about = int(match.group(1)) if match else None
        elif folder in ("drift", "dataset-drift", "performance"):
            report_kind, about = folder, None
        elif parts[-1].startswith("validation-"):
            if owner not in judged:
                judged[owner] = _validated_versions(ws, owner)
            report_kind, about = "validation", judged[owner].get(info.key)
        else:
            continue
        if (kind is None or report_kind == kind) and (version is None or about == version):
            found.append(StoredReport(info.key, owner, report_kind, about, info.created_at, info.size))
    return sorted(found, key=lambda r: (r.created_at, r.key))


def find_report(ws: Workspace, ref: str, *, kind: str | None = None) -> StoredReport:
    """A report by store key, or the newest matching ``MODEL``, ``MODEL:VERSION`` (and ``kind``)."""
    if ref.startswith("reports/"):
        matches = [r for r in stored_reports(ws, ref.split("/")[1] if ref.count("/") > 1 else None)
                   if r.key == ref]
        if not matches:
            raise LoopmlError(f"no report {ref!r} in the store; see `loopml reports list`")
        return matches[0]
    model, _, raw = ref.partition(":")
    version = None
    if raw:
        try:
            version = int(raw.lstrip("v"))
        except ValueError:
            raise LoopmlError(f"{ref!r}: say MODEL, MODEL:VERSION or a store key (reports/...)") from None
    matches = stored_reports(ws, model, kind=kind, version=version)
    if not matches:
        what = " ".join(p for p in (kind or "", "report") if p)
        raise LoopmlError(f"no {what} of {ref} in the store; see `loopml reports list {model}`")
    return matches[-1]


def copy_out(ws: Workspace, report: StoredReport) -> Path:
    """The report as a file on this machine (``<home>/reports/<name>``), fetched from the store."""
    path = ws.context.home / "reports" / report.name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ws.store.get(report.key)
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
    return path


def shareable_url(ws: Workspace, key: str) -> str | None:
    """A link to a stored report that opens on another machine (a presigned S3 URL), or None when
    the store gives none: a ``file://`` path on the machine that wrote it is no link for anyone else."""
    linking = ws.ability(ws.store, LinkingStore)
    if linking is None:
        return None
    try:
        url = linking.url(key)
    except Exception:  # a link is a convenience: the report itself stays in the store
        return None
    return url if url.startswith(("https://", "http://")) else None


def pointer_markdown(ws: Workspace, key: str, title: str, url: str | None = None) -> str:
    """Where to read the full report, as markdown for a Prefect artifact: ``url`` (from
    :func:`shareable_url`) when there is one, and always the command that fetches it from the store."""
    store = "" if ws.store.uri.startswith("file://") else f" in `{ws.store.uri}`"  # a worker's path helps no one
    fetch = f"`loopml reports show {key}` (stored as `{key}`{store})"
    return f"[{title}]({url}); or {fetch}" if url else fetch
