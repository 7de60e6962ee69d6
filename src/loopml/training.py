"""Training frames (point-in-time) and the deterministic holdout split."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from loopml.errors import DataValidationError

if TYPE_CHECKING:
    from datetime import datetime

    import pandas as pd

    from loopml.config import PipelineConfig
    from loopml.features import FeatureView
    from loopml.protocols import FeatureStore


def training_frame(labels: pd.DataFrame, store: FeatureStore, view: FeatureView,
                   cfg: PipelineConfig, features: Sequence[str] | None = None) -> pd.DataFrame:
    """Labels joined with the features known at each label's timestamp (no future rows)."""
    keep = [cfg.entity, cfg.label_timestamp, cfg.label]
    # A sensitive attribute that is also a feature comes from the view (its value at label time).
    if cfg.sensitive_attribute and cfg.sensitive_attribute not in view.features:
        keep.append(cfg.sensitive_attribute)
    missing = [c for c in keep if c not in labels.columns]
    if missing:
        raise DataValidationError(f"labels dataset {cfg.labels_dataset!r} lacks column(s) {missing}",
                                  column=missing[0])
    frame = store.historical_features(view.name, labels[keep], cfg.label_timestamp, features)
    has_features = frame[f"{view.name}__event_timestamp"].notna()
    return frame[has_features].reset_index(drop=True)


def time_holdout_mask(timestamps: pd.Series, after: datetime) -> np.ndarray:
    """True for rows whose label time is at or after ``after`` (naive instants are taken as UTC)."""
    import pandas as pd

    cutoff = pd.Timestamp(after)
    if cutoff.tzinfo is None:
        cutoff = cutoff.tz_localize("UTC")
    stamps = pd.to_datetime(timestamps, utc=True)
    return (stamps >= cutoff).to_numpy()


def holdout_mask(entity_ids: pd.Series, fraction: float, salt: str = "loopml-holdout") -> np.ndarray:
    """True for holdout rows. Decided by a hash of the entity id, so an entity stays on the same
    side across dataset versions and both models are compared on the same rows."""
    cutoff = int(fraction * 10_000)
    out = np.empty(len(entity_ids), dtype=bool)
    for i, value in enumerate(entity_ids.astype(str)):
        digest = hashlib.blake2b(f"{salt}:{value}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") % 10_000 < cutoff
    return out


def training_fingerprint(*parts: str) -> str:
    """Content hash of what determines a model: data versions, config, code version."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()
