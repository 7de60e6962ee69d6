"""Which uploaded prediction-log segments monitors have read, and which one of them holds right now:
the compact cursor that monitors share through the store (:mod:`loopml.shared_state`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LOG_HORIZON_DAYS = 7  # uploaded segments older than this are neither read nor remembered by a monitor's cursor


def segment_day(key: str) -> str:
    """``YYYY-MM-DD`` of a segment key ``predictions/<model>/<day>/<hour>/<file>`` ('' if not one)."""
    parts = key.split("/")
    return parts[2] if len(parts) == 5 else ""


@dataclass
class SegmentCursor:
    """Which uploaded segments were read, compactly: a writer's segments are numbered in the order it
    closes them, so per writer it keeps the highest part read with every part below it (``upto``),
    the parts read above that (an upload retried late arrives out of order), and the last day seen
    (writers idle past the horizon are dropped). Keys of another shape are kept as they are."""

    writers: dict[str, dict[str, Any]] = field(default_factory=dict)
    others: set[str] = field(default_factory=set)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {"owner", "until"}: being read

    @staticmethod
    def _parse(key: str) -> tuple[str, int] | None:
        name = key.rsplit("/", 1)[-1].removesuffix(".jsonl")
        writer, _, part = name.rpartition("-")
        return (key.rsplit("/", 3)[0] + "/" + writer, int(part)) if writer and part.isdigit() else None

    def __contains__(self, key: str) -> bool:
        parsed = self._parse(key)
        if parsed is None:
            return key in self.others
        state = self.writers.get(parsed[0])
        return state is not None and (parsed[1] <= state["upto"] or parsed[1] in state["above"])

    def add(self, key: str) -> None:
        parsed = self._parse(key)
        if parsed is None:
            self.others.add(key)
            return
        state = self.writers.setdefault(parsed[0], {"upto": -1, "above": [], "day": ""})
        above = set(state["above"]) | {parsed[1]}
        while state["upto"] + 1 in above:
            state["upto"] += 1
            above.discard(state["upto"])
        state["above"] = sorted(above)
        state["day"] = max(state["day"], segment_day(key))

    def forget_before(self, day: str) -> None:
        self.writers = {w: st for w, st in self.writers.items() if st["day"] >= day}
        self.others = {k for k in self.others if segment_day(k) >= day}
        self.claims = {k: c for k, c in self.claims.items() if segment_day(k) >= day}

    # A monitor first claims the segments it will read (a lease: ``until``), and only when its run
    # succeeded commits them as read; on failure it releases them, and a claim whose owner died
    # expires. So a failed read, drift check or report leaves the rows for the next run.
    def claimable(self, key: str, now: float) -> bool:
        claim = self.claims.get(key)
        return key not in self and (claim is None or claim["until"] < now)

    def claim(self, keys: Sequence[str], owner: str, until: float) -> None:
        for key in keys:
            self.claims[key] = {"owner": owner, "until": until}

    def release(self, keys: Sequence[str], owner: str) -> None:
        for key in keys:
            if self.claims.get(key, {}).get("owner") == owner:
                del self.claims[key]

    def commit(self, keys: Sequence[str], owner: str) -> None:
        """Mark ``keys`` read (whatever became of the claim: the rows were processed once, here)."""
        self.release(keys, owner)
        for key in keys:
            self.add(key)

    def to_value(self) -> dict[str, Any]:
        return {"writers": self.writers, "others": sorted(self.others), "claims": self.claims}

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> SegmentCursor:
        return cls({w: dict(st) for w, st in value.get("writers", {}).items()}, set(value.get("others", [])),
                   {k: dict(c) for k, c in value.get("claims", {}).items()})
