"""The online-feature lookup a model server calls for rows that carry only the entity id."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loopml.capabilities import RowFeatureStore

if TYPE_CHECKING:
    from loopml.context import Workspace


class LocalLookup:
    """A lookup on this machine (rows kept in memory, else an indexed SQLite read: microseconds): the
    server runs it on its event loop, where a thread hop would cost more than the lookup. Any other lookup (a network
    round trip to Redis, Feast's server) runs in a thread, off the loop."""

    def __init__(self, lookup: Callable[[list[Any]], list[dict[str, Any]]]) -> None:
        self.lookup = lookup

    def __call__(self, ids: list[Any]) -> list[dict[str, Any]]:
        return self.lookup(ids)


def online_lookup(ws: Workspace, view_name: str) -> Callable[[list[Any]], list[dict[str, Any]]]:
    """ids -> one row of features per id: the store's row lookup when it has one (no DataFrame),
    else its DataFrame as records."""
    rows = ws.ability(ws.feature_store, RowFeatureStore)
    if rows is not None:
        return LocalLookup(lambda ids: rows.online_rows(view_name, ids))
    store = ws.feature_store
    return lambda ids: store.online_features(view_name, ids).to_dict("records")
