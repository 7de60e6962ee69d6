"""Churn models registered directly (no pipeline run), for tests that serve, race or break things
around a registry: the feature view, a good row, and versions trained and registered in one call."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from loopml.context import Workspace
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join
from loopml.trainers import train_model

VIEW = FeatureView("activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
GOOD = {"tenure_months": 12, "monthly_charges": 70.5, "support_calls": 1, "contract": "month", "region": "north"}


def register_versions(ws: Workspace, seeds: Iterable[int] = (1,), *, prefix: str = "test", promote: bool = True,
                      reference: bool = False, lineage: Mapping[str, Any] | None = None) -> None:
    """Train one churn model per seed on the same data, store and register each (approved); with
    ``promote``, the first becomes production. ``reference`` stores the drift reference too."""
    data = churn.generate(600, seed=5)
    frame = point_in_time_join(data.labels, "label_timestamp", data.activity, VIEW).dropna()
    for seed in seeds:
        trained = train_model(frame, "churned", VIEW.numeric, VIEW.categorical, epochs=2, seed=seed)
        info = ws.store.put(f"models/churn/{prefix}-{seed}/model.pt2", trained.artifact)
        if reference:
            buf = io.BytesIO()
            frame[[*VIEW.numeric, *VIEW.categorical]].to_parquet(buf)
            ws.store.put(f"models/churn/{prefix}-{seed}/reference.parquet", buf.getvalue())
        ws.registry.register("churn", artifact_key=info.key, artifact_sha256=info.sha256, status="approved",
                             actor="test", **({"lineage": dict(lineage)} if lineage else {}))
    if promote:
        ws.registry.set_alias("churn", "production", 1, expected=None, actor="test", reason="first")


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll ``condition`` until true (seconds it took); fail naming ``what`` after ``timeout``."""
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, f"{what} not reached in {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - t0
