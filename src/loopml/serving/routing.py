"""The routing table a request takes one snapshot of."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from loopml.artifacts import Predictor


@dataclass(frozen=True)
class Routing:
    """An immutable routing table, replaced whole on every change: a request takes one snapshot."""

    predictors: Mapping[int, Predictor]
    weights: Mapping[int, float]
    shadow: int | None = None  # gets a copy of every request; its answers are logged, never returned

    def pick(self, rng: random.Random) -> int:
        versions = [v for v, w in self.weights.items() if w > 0]
        if len(versions) == 1:
            return versions[0]
        return rng.choices(versions, weights=[self.weights[v] for v in versions])[0]
