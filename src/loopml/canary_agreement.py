"""Does the candidate answer like production on the same rows? The canary check a distribution
test cannot make.

Comparing the two arms' answer distributions (``canary-output-shift``) misses a model that answers
the right mix to the wrong rows: a shuffled model matches production's distribution exactly, and a
constant one near production's median sits at a KS distance of about 0.5. So the judge also scores
the rows the candidate answered with production and measures agreement on the same rows: Spearman's
rank correlation of scores (binary) or values (regression), Cohen's kappa of classes (multiclass).
A retrained model agrees strongly (0.8 and more on the examples); a constant or shuffled model
agrees about 0, an inverted one about -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_ROWS = 2000  # rows re-scored with production per judgement: enough for a stable estimate


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), float)
    ranks[order] = np.repeat(first + (counts - 1) / 2, counts)
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation; 0 when either side does not vary (a constant model agrees with nothing)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    rx, ry = _ranks(x), _ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's kappa: agreement of two labelings beyond what their class frequencies give by chance."""
    x, y = [str(v) for v in a], [str(v) for v in b]
    if not x:
        return 0.0
    labels = sorted(set(x) | set(y))
    observed = float(np.mean([i == j for i, j in zip(x, y, strict=True)]))
    expected = sum((x.count(c) / len(x)) * (y.count(c) / len(y)) for c in labels)
    return 0.0 if expected >= 1 else (observed - expected) / (1 - expected)


def agreement(task: str, candidate: Sequence[Any], production: Sequence[Any]) -> float:
    """How much the candidate's answers agree with production's on the same rows (-1 to 1)."""
    if task == "multiclass":
        return kappa(candidate, production)
    return spearman(candidate, production)
