"""Task types: what a label may hold, how predictions look, and the metrics that judge them.

A task is data, not a plugin kind: ``binary``, ``multiclass`` or ``regression``. Everything that
depends on it (label checks, loss, metrics, gates, plots, the output drift test) asks this module.

Predictions, as every loader returns them:

* ``binary``: shape ``[n]``, the probability of class 1;
* ``multiclass``: shape ``[n, k]``, one probability per class in ``Signature.classes`` order;
* ``regression``: shape ``[n]``, the predicted value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from loopml.errors import DataValidationError

if TYPE_CHECKING:
    import pandas as pd

TaskKind = Literal["binary", "multiclass", "regression"]
TASKS: tuple[TaskKind, ...] = ("binary", "multiclass", "regression")
MAX_CLASSES = 100
_EPS = 1e-7


@dataclass(frozen=True)
class Metric:
    """A named metric, its direction and how to compute it from labels and predictions."""

    name: str
    higher_is_better: bool
    compute: Callable[[np.ndarray, np.ndarray], float]

    def better(self, a: float, b: float) -> float:
        """How much ``a`` beats ``b`` (positive: better), whatever the direction."""
        return a - b if self.higher_is_better else b - a


# ---------------------------------------------------------------------------- metric functions
def auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via ranks (ties averaged); NaN if one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    y = np.asarray(y, dtype=float)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def binary_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(p) >= 0.5) == np.asarray(y).astype(bool)))


def macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest AUC averaged over the classes present with both outcomes (NaN if none)."""
    y = np.asarray(y).astype(int)
    values = [auc(y == k, probs[:, k]) for k in range(probs.shape[1])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def multiclass_accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(y).astype(int)))


def multiclass_log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(y).astype(int)
    p = np.clip(probs[np.arange(len(y)), y], _EPS, 1.0)
    return float(-np.mean(np.log(p)))


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, dtype=float) - pred) ** 2)))


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, dtype=float) - pred)))


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    y = np.asarray(y, dtype=float)
    total = float(np.sum((y - y.mean()) ** 2))
    if total == 0:
        return float("nan")
    return float(1 - np.sum((y - pred) ** 2) / total)


METRICS: dict[TaskKind, tuple[Metric, ...]] = {
    "binary": (Metric("auc", True, auc), Metric("log_loss", False, binary_log_loss),
               Metric("accuracy", True, binary_accuracy)),
    "multiclass": (Metric("macro_auc", True, macro_auc), Metric("accuracy", True, multiclass_accuracy),
                   Metric("log_loss", False, multiclass_log_loss)),
    "regression": (Metric("rmse", False, rmse), Metric("mae", False, mae), Metric("r2", True, r2)),
}
"""The task's metrics; the first one is the primary metric (gates, regression test, fairness)."""

DEFAULT_THRESHOLDS: dict[TaskKind, dict[str, float]] = {
    "binary": {"auc": 0.70},
    "multiclass": {"macro_auc": 0.70},
    "regression": {"r2": 0.0},  # better than predicting the mean
}


def primary_metric(task: TaskKind) -> Metric:
    return METRICS[task][0]


def metric(task: TaskKind, name: str) -> Metric:
    for m in METRICS[task]:
        if m.name == name:
            return m
    known = ", ".join(m.name for m in METRICS[task])
    raise KeyError(f"{name!r} is not a {task} metric; choose one of: {known}")


def evaluate_all(task: TaskKind, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {m.name: m.compute(y, pred) for m in METRICS[task]}


# ---------------------------------------------------------------------------- labels
def check_label(values: pd.Series, task: TaskKind, column: str) -> tuple[str, ...]:
    """Refuse a label that does not fit the task; return the class names (empty for regression).

    Raises :class:`DataValidationError` naming the column, what was found and what to do.
    """
    import pandas as pd

    if values.isna().any():
        n = int(values.isna().sum())
        raise DataValidationError(f"label column {column!r} has {n} missing value(s); drop those rows "
                                  "or fill them before training", column=column)
    if len(values) == 0:
        raise DataValidationError(f"label column {column!r} has no rows to train on", column=column)
    distinct = pd.unique(values)
    shown = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in sorted(distinct, key=str)[:8])
    more = "" if len(distinct) <= 8 else f", … ({len(distinct)} distinct)"
    if task == "binary":
        numeric = pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values)
        if not numeric or not set(np.unique(values.astype(float))) <= {0.0, 1.0}:
            hint = ("it looks like a count or a measurement: use task = \"regression\""
                    if numeric else "encode it as 0/1, or use task = \"multiclass\"")
            raise DataValidationError(
                f"label column {column!r} does not fit task \"binary\": it must hold 0/1, found "
                f"{len(distinct)} distinct value(s) ({shown}{more}); {hint}", column=column)
        return ("0", "1")
    if task == "multiclass":
        if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values.to_numpy(), 1) == 0):
            raise DataValidationError(
                f"label column {column!r} does not fit task \"multiclass\": it holds fractional numbers "
                f"({shown}{more}); use task = \"regression\"", column=column)
        if len(distinct) < 2 or len(distinct) > MAX_CLASSES:
            raise DataValidationError(
                f"label column {column!r} does not fit task \"multiclass\": it needs 2 to {MAX_CLASSES} "
                f"classes, found {len(distinct)} ({shown}{more})", column=column)
        return tuple(sorted({_class_name(v) for v in distinct}))
    if task == "regression":
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            raise DataValidationError(
                f"label column {column!r} does not fit task \"regression\": it must be numeric, found "
                f"{values.dtype} values ({shown}{more})", column=column)
        if not np.isfinite(values.to_numpy(dtype=float)).all():
            raise DataValidationError(f"label column {column!r} holds infinite values", column=column)
        return ()
    raise DataValidationError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def _class_name(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if hasattr(value, "item"):
        value = value.item()  # type: ignore[union-attr]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
    return str(value)


def encode_label(values: pd.Series, task: TaskKind, classes: tuple[str, ...]) -> np.ndarray:
    """Labels as numbers for losses and metrics: 0/1, class index, or float."""
    if task == "binary":
        return values.to_numpy(dtype=float).astype(int)
    if task == "multiclass":
        index = {c: i for i, c in enumerate(classes)}
        names = [_class_name(v) for v in values.tolist()]
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            raise DataValidationError(f"label value(s) {unknown[:5]} are not among the model's classes "
                                      f"{list(classes)}")
        return np.array([index[n] for n in names], dtype=int)
    return values.to_numpy(dtype=float)


def output_summary(task: TaskKind, pred: np.ndarray, classes: tuple[str, ...] = ()) -> np.ndarray:
    """One value per row that the output-drift test compares: the score, value, or predicted class."""
    if task == "multiclass":
        idx = np.argmax(np.asarray(pred), axis=1)
        return np.array([classes[i] if i < len(classes) else str(i) for i in idx], dtype=object)
    return np.asarray(pred, dtype=float)
