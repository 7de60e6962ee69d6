"""Store maintenance: remove unreferenced blobs and dead writers' temp files (safe beside writers)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import on_failure, workspace
from loopml.maintenance import collect_garbage


@flow(name="loopml-store-gc", on_failure=on_failure("store-gc"))
def store_gc(config: str | None = None, profile: str | None = None) -> dict[str, int]:
    """Run the artifact store's gc (the same as ``loopml store gc``)."""
    ws = workspace(config, profile)
    result = collect_garbage(ws)
    get_run_logger().info("%s: removed %d unreferenced blobs and %d temp files, %.1f MB freed",
                          ws.store.uri, result.blobs, result.temp_files, result.bytes_freed / 1e6)
    return {"blobs": result.blobs, "temp_files": result.temp_files, "bytes_freed": result.bytes_freed}
