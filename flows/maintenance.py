"""Store maintenance: remove unreferenced blobs and dead writers' temp files (safe beside writers)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import emits_lineage, on_failure, workspace
from loopml.maintenance import clean_store


@flow(name="loopml-store-gc", on_failure=on_failure("store-gc"))
@emits_lineage
def store_gc(config: str | None = None, profile: str | None = None, keep_predictions_days: int | None = None,
             keep_reports_days: int | None = None) -> dict[str, int]:
    """Expire old log segments and reports (when asked), then run the store's gc (as ``loopml store gc``)."""
    ws = workspace(config, profile)
    cleaned = clean_store(ws, predictions_days=keep_predictions_days, reports_days=keep_reports_days)
    get_run_logger().info("%s", cleaned.describe(ws.store.uri))
    return cleaned.to_dict()
