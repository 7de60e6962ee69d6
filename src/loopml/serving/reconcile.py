"""Serve what the aliases say: the one reconcile algorithm.

Both ways of serving use it: the loop's serving backend (:func:`loopml.stages.deploy.sync_serving`,
any :class:`~loopml.protocols.ServingBackend`) and ``loopml serve``'s registry follower (an
in-process :class:`~loopml.serving.core.ServingCore`). Each gives an adapter with four verbs; the
algorithm orders them so that no request is dropped: new versions load before traffic moves, and
old ones leave only after it moved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from loopml.config import RolloutConfig
from loopml.records import Rollout

if TYPE_CHECKING:
    from loopml.context import Workspace


CANARY = "canary"
PRODUCTION = "production"


def routing_for(aliases: Mapping[str, int], rollout: Rollout | None = None, *,
                main_alias: str = PRODUCTION) -> tuple[dict[int, float], int | None]:
    """(traffic weights, shadow version) the aliases call for. The version under ``canary`` (when it
    differs from ``main_alias``) gets ``rollout.share`` of traffic, or in shadow mode a copy of every
    request; with no rollout it gets nothing. Every server that follows the registry routes by this
    one rule."""
    main = aliases.get(main_alias)
    if main is None:
        return {}, None
    cand = aliases.get(CANARY)
    if cand is None or cand == main or rollout is None:
        return {main: 1.0}, None
    if rollout.mode == "shadow":
        return {main: 1.0}, cand
    return {main: 1.0 - rollout.share, cand: rollout.share}, None


def policy_rollout(policy: RolloutConfig) -> Rollout:
    """The rollout a new canary gets from the project's policy (``direct`` promotes without a
    canary; a ``canary`` alias set by hand then takes ``canary_weight`` of traffic)."""
    return Rollout("shadow" if policy.mode == "shadow" else "canary", policy.canary_weight)


def rollout_of(ws: Workspace, name: str) -> Rollout:
    """How traffic follows ``name``'s canary: as the registry recorded it when the alias was set
    (every replica reads the same), else (an alias set before rollouts were recorded) the policy."""
    return ws.registry.rollout(name, CANARY) or policy_rollout(policy_of(ws))


def policy_of(ws: Workspace) -> RolloutConfig:
    """The project's rollout policy (``[pipeline.rollout]``; the defaults without a pipeline)."""
    return ws.config.pipeline.rollout if ws.config.pipeline is not None else RolloutConfig()


class Routable(Protocol):
    """What a server must offer to be reconciled with the registry."""

    def served(self) -> tuple[dict[int, float], int | None, set[int]]:
        """(current weights, current shadow version, every loaded version)."""

    def load(self, version: int) -> None:
        """Load ``version`` next to the others, taking no traffic yet."""

    def route(self, weights: Mapping[int, float], shadow: int | None) -> None:
        """Move traffic (and the shadow copy) in one step."""

    def drop(self, version: int) -> None:
        """Unload ``version``; it takes no traffic any more."""


def desired_routing(ws: Workspace, name: str, *, main_alias: str = PRODUCTION) -> tuple[dict[int, float], int | None]:
    """(traffic weights, shadow version) the registry's aliases and recorded rollout call for."""
    return routing_for(ws.registry.aliases(name), rollout_of(ws, name), main_alias=main_alias)


def reconcile(target: Routable, weights: Mapping[int, float], shadow: int | None) -> bool:
    """Make ``target`` serve ``weights`` (and mirror to ``shadow``). True if anything moved.

    Nothing happens when no version is wanted (no production model yet: keep what is served)."""
    if not weights:
        return False
    current, current_shadow, loaded = target.served()
    wanted = dict(weights)
    if current == wanted and current_shadow == shadow and loaded <= {*wanted, *_opt(shadow)}:
        return False
    for version in [*wanted, *_opt(shadow)]:
        if version not in loaded:
            target.load(version)
    target.route(wanted, shadow)
    for version in sorted(loaded - set(wanted) - set(_opt(shadow))):
        target.drop(version)
    return True


def _opt(version: int | None) -> tuple[int, ...]:
    return () if version is None else (version,)
