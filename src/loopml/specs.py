"""Backend specs: what a registration hook returns to declare a backend."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

BackendKind = Literal[
    "artifact_store", "tracker", "registry", "feature_store", "serving", "monitor", "trainer", "gate_check"
]
KINDS: tuple[BackendKind, ...] = (
    "artifact_store",
    "tracker",
    "registry",
    "feature_store",
    "serving",
    "monitor",
    "trainer",
    "gate_check",
)
_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,39}$")


class NoOptions(BaseModel):
    """Options model for a backend that takes none: any key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class BackendSpec:
    """Declares one backend.

    ``factory(options, context)`` builds it from validated options (an instance of
    ``options_model``) and a :class:`loopml.context.BackendContext`. Import the vendor SDK inside
    the factory, never at module level, so listing plugins stays cheap.
    """

    name: str
    factory: Callable[[Any, Any], Any]
    options_model: type[BaseModel] = NoOptions
    description: str = ""
    uri_schemes: tuple[str, ...] = ()  # artifact stores only: e.g. ("s3",)
    requires: tuple[str, ...] = ()  # importable modules the factory needs, for `plugins check`

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"backend name {self.name!r} is invalid: use 1-40 lowercase letters, digits, '-' "
                "or '_', starting with a letter"
            )
        model_config = getattr(self.options_model, "model_config", {})
        if model_config.get("extra") != "forbid":
            raise ValueError(
                f"backend {self.name!r}: options_model {self.options_model.__name__} must set "
                "model_config = ConfigDict(extra='forbid') so misspelled options are rejected"
            )
