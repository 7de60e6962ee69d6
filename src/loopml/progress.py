"""Progress of long steps, reported to whoever shows it (the CLI's rich bar; nothing by default).

A process-wide sink, not a context variable, because Prefect may run a flow's body in another
thread of the same process. ``loopml run`` installs a rich progress bar; flows log each epoch too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

ProgressSink = Callable[[str, int, int, dict[str, float]], None]
"""``sink(stage, done, total, metrics)``: e.g. ``("train churn", 3, 25, {"train_loss": 0.41})``."""

_sink: ProgressSink | None = None


def set_sink(sink: ProgressSink | None) -> ProgressSink | None:
    """Install ``sink`` (None removes it); returns the previous one so callers can restore it."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def report(stage: str, done: int, total: int, metrics: dict[str, float] | None = None) -> None:
    sink = _sink
    if sink is not None:
        with contextlib.suppress(Exception):  # a display problem must never fail training
            sink(stage, done, total, metrics or {})
