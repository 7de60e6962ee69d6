"""Small mutable state shared through the artifact store: a monitor's log cursor, the last drift
alert. Monitors on different machines then need no common disk, only the store (S3) they already use.

The store is create-only, which is all a compare-and-set log needs: version ``n`` of a state is the
object ``state/<name>/<n>.json``. Writing version ``n + 1`` succeeds for exactly one writer; every
other writer of that version gets ``ObjectExistsError`` (its bytes differ: each write carries a
random nonce), which :meth:`SharedState.write` turns into ``StateConflictError``. The caller reads
again and decides.

Old versions are pruned after each write, keeping the last ``KEEP``. A pruned key could be created
again by a writer that read long ago, so pruning first records a *floor* (``floor-<n>``: versions
below ``n`` are gone) and only then deletes; a writer checks the floor after its put, so a write
below the floor is a conflict, not a silent success.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from loopml.errors import LoopmlError, ObjectExistsError, ObjectNotFoundError
from loopml.keys import validate_key

KEEP = 5  # versions kept after a write (readers that listed just before a prune still find theirs)


class StateConflictError(LoopmlError):
    """Another process wrote this version of the state first; read it again and retry."""


@dataclass(frozen=True)
class StateVersion:
    version: int  # 0: never written
    value: dict[str, Any] = field(default_factory=dict)


class SharedState:
    """One named state in ``store`` (``name`` like ``monitoring/churn/log-cursor``)."""

    def __init__(self, store: Any, name: str) -> None:
        validate_key(name)
        self.store = store
        self.prefix = f"state/{name}/"

    def _listing(self) -> tuple[list[int], list[int]]:
        """(versions, floors) present in the store, each sorted."""
        versions, floors = [], []
        for info in self.store.list(self.prefix):
            stem = info.key[len(self.prefix):].removesuffix(".json")
            if stem.isdigit():
                versions.append(int(stem))
            elif stem.startswith("floor-") and stem[6:].isdigit():
                floors.append(int(stem[6:]))
        return sorted(versions), sorted(floors)

    def _versions(self) -> list[int]:
        return self._listing()[0]

    def _key(self, version: int) -> str:
        return f"{self.prefix}{version:012d}.json"

    def read(self) -> StateVersion:
        """The newest version (``StateVersion(0)`` when none was written)."""
        for _ in range(5):  # a prune between our list and our get: list again
            versions = self._versions()
            if not versions:
                return StateVersion(0)
            try:
                body = json.loads(self.store.get(self._key(versions[-1])))
            except ObjectNotFoundError:
                continue
            return StateVersion(versions[-1], body["value"])
        raise StateConflictError(f"state {self.prefix} changed too fast to read")

    def write(self, expected: int, value: dict[str, Any]) -> StateVersion:
        """Write ``value`` as version ``expected + 1``; ``StateConflictError`` if someone else did."""
        body = {"value": value, "written_at": time.time(), "nonce": secrets.token_hex(8)}
        try:
            self.store.put(self._key(expected + 1), json.dumps(body, sort_keys=True).encode(),
                           metadata={"content-type": "application/json"})
        except ObjectExistsError:
            raise StateConflictError(f"state {self.prefix} moved past version {expected}") from None
        versions, floors = self._listing()
        if floors and expected + 1 < floors[-1]:  # we re-created a pruned version: we are stale
            self._delete(self._key(expected + 1))
            raise StateConflictError(f"state {self.prefix} moved past version {expected}")
        if len(versions) > KEEP:
            floor = versions[-KEEP]
            with contextlib.suppress(ObjectExistsError):
                self.store.put(f"{self.prefix}floor-{floor:012d}", b"{}", metadata={"content-type": "application/json"})
            for old in versions[:-KEEP]:
                self._delete(self._key(old))
            for old in floors:
                if old < floor:
                    self._delete(f"{self.prefix}floor-{old:012d}")
        return StateVersion(expected + 1, value)

    def _delete(self, key: str) -> None:
        with contextlib.suppress(ObjectNotFoundError):
            self.store.delete(key)
