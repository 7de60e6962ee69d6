"""Permutation importance: how much the model's primary metric on the holdout drops when one
feature's values are shuffled across rows (Breiman 2001; scikit-learn's ``permutation_importance``).

Model-agnostic, so it explains any trainer's artifact the same way, and measured on the holdout the
gates judge, so it says what *this* model relies on for *these* rows. A feature the model ignores
scores about 0; a negative value is noise. Each feature is shuffled ``repeats`` times with a fixed
seed (the same model and rows give the same numbers), and the mean drop is reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from loopml import tasks

if TYPE_CHECKING:
    import pandas as pd

    from loopml.artifacts import Predictor

REPEATS = 3
MAX_ROWS = 5_000  # a seeded sample beyond this: the ranking settles long before


def permutation_importance(predictor: Predictor, holdout: pd.DataFrame, labels: np.ndarray, *,
                           repeats: int = REPEATS, seed: int = 0) -> dict[str, float]:
    """Feature -> mean drop of the primary metric when that feature is shuffled, largest first."""
    sig = predictor.signature
    primary = tasks.primary_metric(sig.task)
    if len(holdout) < 2:
        return {}
    rng = np.random.default_rng(seed)
    if len(holdout) > MAX_ROWS:
        keep = np.sort(rng.choice(len(holdout), MAX_ROWS, replace=False))
        holdout, labels = holdout.iloc[keep], labels[keep]
    frame = holdout[list(sig.features)].reset_index(drop=True)
    base = primary.compute(labels, predictor.predict_frame(frame))
    out: dict[str, float] = {}
    for feature in sig.features:
        drops = []
        original = frame[feature].to_numpy()
        for _ in range(repeats):
            shuffled = frame.assign(**{feature: original[rng.permutation(len(frame))]})
            drops.append(primary.better(base, primary.compute(labels, predictor.predict_frame(shuffled))))
        out[feature] = float(np.nanmean(drops))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
