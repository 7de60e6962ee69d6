"""`loopml registry status|upgrade`: the registry database's schema, upgraded as an explicit step."""

from __future__ import annotations

from loopml.cli.common import ConfigOpt, ProfileOpt, out, registry_app, workspace
from loopml.errors import ConfigError


def _migrating(config: ConfigOpt, profile: ProfileOpt):  # type: ignore[no-untyped-def]
    from loopml.capabilities import MigratingRegistry

    ws = workspace(config, profile)
    registry = ws.ability(ws.registry, MigratingRegistry)
    if registry is None:
        raise ConfigError(f"the registry backend {ws.config.registry.backend!r} has no schema loopml manages")
    return registry


@registry_app.command("status")
def registry_status(config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """The schema revision of the registry's database and the one this loopml needs."""
    current, needed = _migrating(config, profile).schema_status()
    state = "up to date" if current == needed else "run `loopml registry upgrade`"
    out.print(f"registry schema: {current or 'none'}; this loopml needs {needed} ({state})")


@registry_app.command("upgrade")
def registry_upgrade(config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Upgrade the registry's schema to this loopml's (back the database up first). Safe to repeat;
    every replica and worker must run a loopml at least this new afterwards."""
    before, after = _migrating(config, profile).upgrade()
    out.print(f"registry schema: {before or 'none'} -> {after}" if before != after else
              f"registry schema: already at {after}")
