"""Stage 7: the configured serving backend serves what the registry's aliases say."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from loopml.capabilities import EntityServing, ShadowServing
from loopml.errors import ConfigError
from loopml.serving.artifact_cache import artifact_file
from loopml.serving.online import online_lookup
from loopml.serving.reconcile import desired_routing, reconcile
from loopml.stages.project import view_of

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.protocols import ServingBackend


class _BackendTarget:
    """A :class:`~loopml.protocols.ServingBackend` seen by :func:`loopml.serving.reconcile.reconcile`."""

    def __init__(self, ws: Workspace, name: str, serving: ServingBackend) -> None:
        self.ws, self.name, self.serving = ws, name, serving
        self.url: str | None = None

    def served(self) -> tuple[dict[int, float], int | None, set[int]]:
        status = self.serving.status()
        self.url = status.get("url")
        weights = {int(v): float(w) for v, w in status.get("traffic", {}).items()}
        loaded = set(weights) | {int(v) for v in status.get("versions", [])}
        return weights, status.get("shadow"), loaded

    def load(self, version: int) -> None:
        model = self.ws.registry.get(self.name, version)
        self.url = self.serving.deploy(model, artifact_file(self.ws, model))

    def route(self, weights: Mapping[int, float], shadow: int | None) -> None:
        self.serving.set_traffic(weights)
        shadowing = self.ws.ability(self.serving, ShadowServing)
        if shadowing is not None:
            shadowing.set_shadow(shadow)
        elif shadow is not None:
            raise ConfigError(f"serving backend {self.serving.name!r} cannot mirror requests; "
                              "use rollout mode 'canary'")

    def drop(self, version: int) -> None:
        self.serving.undeploy(version)


def sync_serving(ws: Workspace, name: str) -> str | None:
    """Make the configured serving backend serve what the aliases say: production, plus the canary
    (a traffic share, or a shadow copy of requests), through the one reconcile algorithm, so no
    request is dropped. Returns the serving URL (None: nothing to serve)."""
    serving = ws.serving
    by_entity = ws.ability(serving, EntityServing)
    if by_entity is not None:  # requests may name just the entity
        view = view_of(ws)
        by_entity.use_online_features(online_lookup(ws, view.name))
    weights, shadow = desired_routing(ws, name)
    if not weights:
        return None
    target = _BackendTarget(ws, name, serving)
    reconcile(target, weights, shadow)
    return target.url or serving.status().get("url")
