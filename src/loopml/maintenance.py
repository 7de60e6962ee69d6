"""Store maintenance shared by ``loopml store gc`` and the ``loopml-store-gc`` flow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loopml.capabilities import CollectableStore
from loopml.errors import LoopmlError

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import GcResult


def collect_garbage(ws: Workspace) -> GcResult:
    """Remove blobs no key refers to and temp files of killed writers (safe while writers run)."""
    store = ws.ability(ws.store, CollectableStore)
    if store is None:
        raise LoopmlError(f"the artifact store {ws.store.uri} has no gc; expire its unreferenced "
                          "objects with the service's own lifecycle rules")
    return store.gc()
