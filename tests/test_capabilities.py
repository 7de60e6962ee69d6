"""Optional abilities are declared Protocols, found once when the workspace builds a backend."""

from __future__ import annotations

from pathlib import Path

from loopml import capabilities as cap
from loopml.cli import main
from loopml.context import Workspace
from loopml.errors import LoopmlError
from loopml.maintenance import collect_garbage
from loopml.protocols import QueryableTracker


def test_the_builtin_backends_declare_what_they_can_do(project: Path) -> None:
    ws = Workspace.open()
    able = {a.__name__ for b in (ws.store, ws.serving, *ws.trackers)
            for a in (*cap.OPTIONAL["artifact_store"], *cap.OPTIONAL["serving"], *cap.OPTIONAL["tracker"])
            if ws.ability(b, a) is not None}
    assert able == {"ExportingStore", "CollectableStore", "ShadowServing", "EntityServing", "LogFlushingServing",
                    "StoreLoggingServing", "InProcessServing", "QueryableTracker"}
    assert ws.ability(ws.store, cap.LinkingStore) is None  # a local path is no URL for another machine
    assert ws.ability(ws.trackers[0], QueryableTracker) is ws.trackers[0]


def test_an_ability_a_backend_lacks_is_a_clear_error_where_a_user_asks_for_it(project: Path, capsys) -> None:
    ws = Workspace.open()

    class NoGc:  # the store's verbs, and nothing more
        def __init__(self, store: object) -> None:
            self._store, self.uri = store, "memory://"

        def __getattr__(self, verb: str) -> object:
            if verb == "gc":
                raise AttributeError(verb)
            return getattr(self._store, verb)

    plain = NoGc(ws.store)
    assert ws.ability(plain, cap.CollectableStore) is None
    ws.store = plain  # type: ignore[misc]
    try:
        collect_garbage(ws)
    except LoopmlError as exc:
        assert "has no gc" in str(exc) and "lifecycle rules" in str(exc)
    else:
        raise AssertionError("gc on a store without gc must fail clearly")
    assert main(["store", "gc"]) == 0  # the project's own store can: it runs
    assert "removed" in capsys.readouterr().out
