"""Feature definitions shared by training and serving, and the point-in-time join.

One :class:`FeatureView` says which entity-keyed, timestamped columns are features. Training asks
the feature store for them *as of each label's timestamp*; serving asks for the latest values
online. Both read the same definition, so there is no training/serving skew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from loopml.errors import DataValidationError

if TYPE_CHECKING:
    import pandas as pd

    from loopml.config import FeaturesConfig


@dataclass(frozen=True)
class FeatureView:
    """Entity-keyed, timestamped features from one dataset."""

    name: str
    entity: str
    timestamp: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    ttl: timedelta | None = None

    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    @classmethod
    def from_config(cls, cfg: FeaturesConfig, entity: str) -> FeatureView:
        return cls(cfg.view, entity, cfg.timestamp, tuple(cfg.numeric), tuple(cfg.categorical),
                   timedelta(days=cfg.ttl_days) if cfg.ttl_days else None)

    def check_source(self, frame: pd.DataFrame) -> None:
        missing = [c for c in (self.entity, self.timestamp, *self.features) if c not in frame.columns]
        if missing:
            raise DataValidationError(
                f"feature view {self.name!r}: source lacks column(s) {missing}; "
                f"it has {list(frame.columns)}", column=missing[0])


def point_in_time_join(
    entities: pd.DataFrame,
    entity_timestamp: str,
    source: pd.DataFrame,
    view: FeatureView,
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """For each entity row, the latest feature row stamped at or before its timestamp.

    Rows with no such feature row (or only one older than the TTL) get nulls. The result keeps
    ``entities``' row order and columns, plus the features and ``<view>__event_timestamp`` (the
    timestamp of the joined feature row, for audits and leakage tests).
    """
    import pandas as pd

    features = list(features or view.features)
    view.check_source(source)
    unknown = [f for f in features if f not in source.columns]
    if unknown:
        raise DataValidationError(f"feature view {view.name!r}: source has no column(s) {unknown}",
                                  column=unknown[0])
    if view.entity not in entities.columns or entity_timestamp not in entities.columns:
        raise DataValidationError(
            f"entity frame needs columns {view.entity!r} and {entity_timestamp!r}",
            column=view.entity)
    left = entities.reset_index(drop=True).copy()
    left["__row"] = range(len(left))
    # One resolution on both sides, or merge_asof refuses (us from Parquet vs ns from pandas).
    left["__ts"] = pd.to_datetime(left[entity_timestamp], utc=True).astype("datetime64[ns, UTC]")
    stamp_col = f"{view.name}__event_timestamp"
    right = source[[view.entity, view.timestamp, *features]].copy()
    right["__ts"] = pd.to_datetime(right[view.timestamp], utc=True).astype("datetime64[ns, UTC]")
    right = right.rename(columns={view.timestamp: stamp_col})
    # Same dtype on both sides of the "by" key, or merge_asof refuses.
    left["__key"] = left[view.entity].astype("string")
    right["__key"] = right[view.entity].astype("string")
    right = right.drop(columns=[view.entity])
    merged = pd.merge_asof(
        left.sort_values("__ts"), right.sort_values("__ts"), on="__ts", by="__key",
        direction="backward", allow_exact_matches=True,
        tolerance=pd.Timedelta(view.ttl) if view.ttl else None,
    )
    merged = merged.sort_values("__row").reset_index(drop=True)
    return merged.drop(columns=["__row", "__ts", "__key"])
