"""Store maintenance: remove unreferenced blobs and dead writers' temp files (safe beside writers)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import on_failure, workspace
from loopml.maintenance import collect_garbage, expire


@flow(name="loopml-store-gc", on_failure=on_failure("store-gc"))
def store_gc(config: str | None = None, profile: str | None = None, keep_predictions_days: int | None = None,
             keep_reports_days: int | None = None) -> dict[str, int]:
    """Expire old log segments and reports (when asked), then run the store's gc (as ``loopml store gc``)."""
    ws = workspace(config, profile)
    expired = expire(ws, predictions_days=keep_predictions_days, reports_days=keep_reports_days)
    result = collect_garbage(ws)
    get_run_logger().info("%s: expired %d log segments and %d reports; removed %d unreferenced blobs and %d temp "
                          "files, %.1f MB freed", ws.store.uri, expired.segments, expired.reports, result.blobs,
                          result.temp_files, result.bytes_freed / 1e6)
    return {"expired_segments": expired.segments, "expired_reports": expired.reports, "blobs": result.blobs,
            "temp_files": result.temp_files, "bytes_freed": result.bytes_freed}
