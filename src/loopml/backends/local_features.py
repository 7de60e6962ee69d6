"""The embedded feature store: offline rows as Parquet, online values in SQLite.

``apply`` stores a view's definition and its source rows; ``historical_features`` is the
point-in-time join of :mod:`loopml.features`; ``materialize`` writes each entity's latest row
(within the TTL, as of ``end``) to SQLite; ``online_features`` reads them back by entity id.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from loopml import canonical
from loopml.errors import DataValidationError
from loopml.features import FeatureView, point_in_time_join

if TYPE_CHECKING:
    import pandas as pd


#: How stale a server's idea of the view definition and the online file may be: ``online_rows``
#: checks both files at most this often, not on every request (two stats cost more than the lookup).
RECHECK_SECONDS = 1.0
#: Online rows a process keeps in memory per view once read (then it starts over).
MAX_CACHED_ROWS = 200_000


class LocalFeatureStoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    root: Path | None = None  # default: <home>/features


class LocalFeatureStore:
    """Point-in-time correct offline store and SQLite online store, with no server."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.online_path = self.root / "online.db"
        self._reader: sqlite3.Connection | None = None  # kept for online_rows (a server's hot path)
        self._reader_lock = threading.Lock()
        self._views: dict[str, tuple[float, FeatureView]] = {}
        self._hot: dict[str, tuple[float, FeatureView]] = {}  # view name -> (when checked, view)
        self._online_state: tuple[int, int, int] | None = None  # inode, mtime, size of the online file when read
        self._rows: dict[str, dict[str, dict[str, Any] | None]] = {}  # view -> entity -> features (None: not there)

    def _view(self, name: str) -> FeatureView:
        path = self.root / f"{name}.view.json"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            raise DataValidationError(f"feature view {name!r} is not applied; run the features flow") from None
        cached = self._views.get(name)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        raw = json.loads(path.read_text())
        view = self._parse_view(raw)
        self._views[name] = (mtime, view)
        return view

    @staticmethod
    def _parse_view(raw: dict[str, Any]) -> FeatureView:
        return FeatureView(raw["name"], raw["entity"], raw["timestamp"], tuple(raw["numeric"]),
                           tuple(raw["categorical"]),
                           timedelta(seconds=raw["ttl"]) if raw["ttl"] is not None else None)

    def apply(self, view: FeatureView, source: pd.DataFrame) -> None:
        view.check_source(source)
        body = asdict(view)
        body["ttl"] = view.ttl.total_seconds() if view.ttl else None
        tmp = self.root / f".{view.name}.parquet.tmp"
        source.to_parquet(tmp, index=False)
        tmp.replace(self.root / f"{view.name}.parquet")
        tmp_def = self.root / f".{view.name}.view.json.tmp"
        tmp_def.write_text(json.dumps(body, indent=2))
        tmp_def.replace(self.root / f"{view.name}.view.json")
        self._hot.pop(view.name, None)  # this process's lookups see the new definition at once
        with self._reader_lock:
            self._rows.pop(view.name, None)

    def _source(self, name: str) -> pd.DataFrame:
        return canonical.read_frame(self.root / f"{name}.parquet")

    def historical_features(self, view_name: str, entities: pd.DataFrame, timestamp_column: str,
                            features: Sequence[str] | None = None) -> pd.DataFrame:
        view = self._view(view_name)
        return point_in_time_join(entities, timestamp_column, self._source(view_name), view, features)

    def materialize(self, view_name: str, end: datetime) -> int:
        import pandas as pd

        view = self._view(view_name)
        source = self._source(view_name)
        entities = pd.DataFrame({view.entity: source[view.entity].drop_duplicates().to_numpy()})
        entities["__as_of"] = pd.Timestamp(end)
        latest = point_in_time_join(entities, "__as_of", source, view).drop(columns="__as_of")
        stamp = f"{view.name}__event_timestamp"
        latest = latest[latest[stamp].notna()]
        rows = [(str(r[view.entity]), str(r[stamp]),
                 json.dumps({f: _plain(r[f]) for f in view.features}))
                for r in latest.to_dict("records")]
        with sqlite3.connect(self.online_path) as db:
            db.execute(f'CREATE TABLE IF NOT EXISTS "{view.name}" (entity TEXT PRIMARY KEY, '
                       "event_timestamp TEXT NOT NULL, features TEXT NOT NULL)")
            db.execute(f'DELETE FROM "{view.name}"')
            db.executemany(f'INSERT INTO "{view.name}" VALUES (?,?,?)', rows)
        with self._reader_lock:
            self._rows.pop(view.name, None)  # this process's lookups see the new rows at once
        return len(rows)

    def online_rows(self, view_name: str, entity_ids: Sequence[Any]) -> list[dict[str, Any]]:
        """The latest materialized features of each entity, as rows (None for one never
        materialized): what a model server looks up per request, with no DataFrame. Rows read once
        are kept in memory (up to ``MAX_CACHED_ROWS``), from a connection kept open: a SQLite read
        transaction per request cost more than the rest of the lookup. ``materialize`` replaces the
        table in one transaction, so a reader sees the old rows or the new ones; a materialization
        or re-applied view in another process is seen within ``RECHECK_SECONDS``, in this one at once."""
        view = self._hot_view(view_name)
        keys = [str(e) for e in entity_ids]
        with self._reader_lock:
            cached = self._rows.setdefault(view.name, {})
            missing = [k for k in keys if k not in cached]
            if missing and self._reader is not None:
                if len(cached) + len(missing) > MAX_CACHED_ROWS:
                    cached.clear()
                for k in missing:
                    cached[k] = None
                for i in range(0, len(missing), 500):
                    chunk = missing[i:i + 500]
                    marks = ",".join("?" * len(chunk))
                    for entity, features in self._reader.execute(
                            f'SELECT entity, features FROM "{view.name}" WHERE entity IN ({marks})', chunk):
                        cached[entity] = json.loads(features)
            found = [cached.get(k) for k in keys]
        empty = dict.fromkeys(view.features)
        return [{view.entity: e, **(row if row is not None else empty)}
                for e, row in zip(entity_ids, found, strict=True)]

    def _hot_view(self, name: str) -> FeatureView:
        """The view, and a reader on the online file, re-checked on disk at most every RECHECK_SECONDS."""
        now = time.monotonic()
        checked = self._hot.get(name)
        if checked is not None and now - checked[0] < RECHECK_SECONDS and self._reader is not None:
            return checked[1]  # (no online file yet: look again on every call until there is one)
        view = self._view(name)  # raises for a view that is not applied
        with self._reader_lock:
            try:
                stat = os.stat(self.online_path)
                state: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                state = None
            if state != self._online_state:  # first call, or the file changed: forget the rows read
                self._rows.clear()
                if state is None or self._online_state is None or state[0] != self._online_state[0]:
                    if self._reader is not None:  # (a file replaced, not changed in place: read the new one)
                        self._reader.close()
                    self._reader = (sqlite3.connect(f"file:{self.online_path}?mode=ro", uri=True,
                                                    check_same_thread=False) if state is not None else None)
                self._online_state = state
            if checked is not None and checked[1] != view:
                self._rows.pop(name, None)
        self._hot[name] = (now, view)
        return view

    def online_features(self, view_name: str, entity_ids: Sequence[Any]) -> pd.DataFrame:
        import pandas as pd

        view = self._view(view_name)
        return pd.DataFrame(self.online_rows(view_name, entity_ids), columns=[view.entity, *view.features])


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
