"""Stage 1 and 2: version the data, apply the feature view, build point-in-time training frames."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loopml import events
from loopml.errors import ConfigError
from loopml.stages.project import pipeline_config, view_of
from loopml.training import holdout_mask, time_holdout_mask, training_frame

if TYPE_CHECKING:
    import pandas as pd

    from loopml.context import Workspace
    from loopml.records import DatasetVersion


def ingest(ws: Workspace, name: str, source: str | Path | None = None) -> tuple[DatasetVersion, bool]:
    """Validate and version one dataset (its configured source unless ``source`` is given);
    announces ``loopml.dataset.versioned``. Returns (version, created)."""
    if source is None:
        cfg = ws.config.datasets.get(name)
        if cfg is None or cfg.source is None:
            raise ConfigError(f"dataset {name!r} has no source: pass one or set "
                              f"[datasets.{name}] source = '…' in loopml.toml")
        source = cfg.source
    path = Path(source)
    if not path.is_absolute() and "://" not in str(source):
        source = ws.config.root / path
    version, created = ws.datasets.ingest(name, source, columns=ws.dataset_rules(name))
    events.announce(ws, events.dataset_versioned_event(ws, version, created), subject=version)
    return version, created


def apply_features(ws: Workspace, features: DatasetVersion) -> int:
    """Register the feature view with its source rows and materialize the online store."""
    view = view_of(ws)
    frame = ws.datasets.load(features)
    ws.feature_store.apply(view, frame)
    end = frame[view.timestamp].max().to_pydatetime()
    return ws.feature_store.materialize(view.name, end)


def frames(ws: Workspace, labels: DatasetVersion,
           extra_features: tuple[str, ...] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): point-in-time training rows, split by a stable hash of the entity.

    ``extra_features`` adds columns beyond the current view (e.g. those the production model was
    trained on, when the feature set changed), so both models see the same rows."""
    cfg = pipeline_config(ws)
    view = view_of(ws)
    wanted = list(dict.fromkeys([*view.features, *extra_features]))
    frame = training_frame(ws.datasets.load(labels), ws.feature_store, view, cfg, wanted)
    holdout = cfg.training.holdout
    if holdout.after is not None:
        mask = time_holdout_mask(frame[cfg.label_timestamp], holdout.after)
    else:
        mask = holdout_mask(frame[cfg.entity], holdout.fraction)
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)
