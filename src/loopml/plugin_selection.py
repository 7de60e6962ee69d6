"""Which installed plugins load: ``LOOPML_LOAD_PLUGINS``, ``LOOPML_DISABLE_PLUGINS`` and the project's lists."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


@dataclass(frozen=True)
class PluginSelection:
    """Which installed (entry-point) plugins load: from the environment and from the project."""

    load: tuple[str, ...] | None = None  # None: all
    disable: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # where the lists came from, for messages

    @classmethod
    def from_env(cls, project_load: Iterable[str] | None = None,
                 project_disable: Iterable[str] = ()) -> PluginSelection:
        env_load, env_disable = _env_list("LOOPML_LOAD_PLUGINS"), _env_list("LOOPML_DISABLE_PLUGINS") or []
        loads = [set(x) for x in (env_load, project_load) if x is not None]
        load = tuple(sorted(set.intersection(*loads))) if loads else None
        sources = tuple(name for name, used in (("LOOPML_LOAD_PLUGINS", env_load is not None),
                                                ("LOOPML_DISABLE_PLUGINS", bool(env_disable)),
                                                ("loopml.toml load_plugins", project_load is not None),
                                                ("loopml.toml disable_plugins", bool(list(project_disable))))
                        if used)
        return cls(load, tuple(sorted({*env_disable, *project_disable})), sources)

    def allows(self, name: str) -> bool:
        return (self.load is None or name in self.load) and name not in self.disable

    def named(self) -> set[str]:
        return {*(self.load or ()), *self.disable}
