"""What every stage reads from the project: its pipeline config, its feature view, production."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loopml.errors import ConfigError, ModelNotFoundError
from loopml.features import FeatureView

if TYPE_CHECKING:
    from loopml.config import PipelineConfig
    from loopml.context import Workspace
    from loopml.records import ModelVersion

log = logging.getLogger(__name__)
PRODUCTION = "production"


def pipeline_config(ws: Workspace) -> PipelineConfig:
    """The project's ``[pipeline]`` table; a clear error when the project has none."""
    if ws.config.pipeline is None:
        raise ConfigError(f"{ws.config.source_file or 'loopml.toml'} has no [pipeline] table; "
                          "create an example project with `loopml init --example churn`")
    return ws.config.pipeline


def view_of(ws: Workspace) -> FeatureView:
    """The one feature view used for training and serving."""
    cfg = pipeline_config(ws)
    return FeatureView.from_config(cfg.features, cfg.entity)


def production_model(ws: Workspace, name: str) -> ModelVersion | None:
    """The version under the ``production`` alias, or None before the first promotion."""
    try:
        return ws.registry.get(name, alias=PRODUCTION)
    except ModelNotFoundError:
        return None


def stamp() -> str:
    """A sortable UTC time stamp for report keys."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def safely(fn: Callable[..., Any], *args: Any) -> None:
    """Call a listener-like backend verb; a failure is logged, never raised (the loop goes on)."""
    try:
        fn(*args)
    except Exception as exc:
        log.warning("%s failed (the loop goes on): %s", getattr(fn, "__qualname__", fn), exc)
