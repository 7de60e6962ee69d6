"""``loopml serve NAME@ALIAS``: a long-running model server that follows the registry.

The server (:mod:`loopml.serving.app`) answers from an immutable routing table. A follower reads the
registry every ``poll_seconds``: when the alias (``production``) moves, by promotion or rollback,
it downloads and verifies the new version's artifact, loads it next to the old one, moves all
traffic to it in one assignment, then drops the old one. Requests in flight finish on the version
they started with, so none fails during a swap. A version under the alias ``canary`` gets what
the rollout recorded with that alias says (a share of traffic, or a shadow copy of every request),
so every replica routes alike. SIGTERM/SIGINT stop accepting connections, let
requests in flight finish, then flush the prediction log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loopml.artifacts import Predictor
from loopml.errors import ConfigError, ModelNotFoundError, RegistryUnavailableError
from loopml.predlog import PredictionLogWriter
from loopml.records import Rollout
from loopml.serving.app import build_app
from loopml.serving.artifact_cache import artifact_file
from loopml.serving.builtin import BuiltinServingOptions
from loopml.serving.core import ServingCore
from loopml.serving.online import online_lookup
from loopml.serving.reconcile import reconcile, rollout_of, routing_for
from loopml.serving.transport import bind, check_exposure, draining_server, uvicorn_config

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.serving.core import ServingCore

log = logging.getLogger(__name__)


@dataclass
class RegistryFollower:
    """Keeps a server's routing equal to what the registry's aliases say."""

    ws: Workspace
    core: ServingCore
    model: str
    alias: str = "production"
    canary_weight: float | None = None  # overrides the share the registry recorded (0: no canary traffic)
    poll_seconds: float = 2.0
    swaps: list[tuple[float, dict[int, float]]] = field(default_factory=list)
    files: dict[int, str] = field(default_factory=dict)  # version -> the local artifact file it was loaded from
    failures: int = 0  # registry reads that failed in a row
    pinned: int | None = None  # GitOps: serve this version only, whatever the aliases say
    pinned_sha256: str | None = None  # ... and only if its artifact has this sha256

    @property
    def known_good_file(self) -> Path:
        return known_good_file(self.ws, self.model, self.alias)

    def desired(self) -> tuple[dict[int, float], int | None]:
        """(traffic weights, shadow version) the aliases and the canary's recorded rollout call for
        (:func:`~loopml.serving.reconcile.routing_for`)."""
        if self.pinned is not None:
            return {self.pinned: 1.0}, None
        rollout: Rollout | None = rollout_of(self.ws, self.model)
        if self.canary_weight is not None and rollout is not None and rollout.mode == "canary":
            rollout = Rollout("canary", self.canary_weight) if self.canary_weight > 0 else None
        return routing_for(self.ws.registry.aliases(self.model), rollout, main_alias=self.alias)

    def sync(self) -> bool:
        """One pass of :func:`loopml.serving.reconcile.reconcile`: load what the aliases name, route to it,
        drop the rest. True if anything moved."""
        wanted, shadow = self.desired()
        if not reconcile(_CoreTarget(self), wanted, shadow):
            return False
        self._remember()
        self.swaps.append((time.time(), wanted))
        log.info("serving %s: %s%s", self.model, ", ".join(f"v{v} {w:.0%}" for v, w in wanted.items()),
                    f"; shadow v{shadow}" if shadow is not None else "")
        return True

    def _remember(self) -> None:
        routing = self.core.routing
        body = {"weights": {str(v): w for v, w in routing.weights.items()}, "shadow": routing.shadow,
                "files": {str(v): self.files[v] for v in routing.predictors if v in self.files},
                "entity": self.core.entity, "at": time.time()}
        self.known_good_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.known_good_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.known_good_file)

    def serve_known_good(self) -> bool:
        """Load what this machine served last (registry unreachable at start). False if it has none."""
        known = read_known_good(self.known_good_file)
        try:
            files = {int(v): Path(p) for v, p in known["files"].items()}
            weights = {int(v): float(w) for v, w in known["weights"].items()}
        except (ValueError, KeyError):
            return False
        if not weights or not all(path.is_file() for path in files.values()) or set(weights) - set(files):
            return False
        for version, path in files.items():
            self.core.add_version(version, Predictor.from_bytes(path.read_bytes()))
            self.files[version] = str(path)
        self.core.set_traffic(weights)
        self.core.set_shadow(known.get("shadow"))
        age = time.time() - float(known.get("at", time.time()))
        log.warning("the registry is unreachable: serving %s as this machine last did %.0f s ago (%s) until it "
                    "is back", self.model, age, ", ".join(f"v{v} {w:.0%}" for v, w in weights.items()))
        return True

    def backoff(self) -> float:
        """Seconds to the next registry read: the poll interval, doubling per failure up to a minute."""
        return self.poll_seconds if not self.failures else min(60.0, self.poll_seconds * 2 ** min(self.failures, 8))

    def wait_for_registry(self, limit: float, first: Exception) -> None:
        """Retry the first sync with back-off for up to ``limit`` seconds, then give up saying why."""
        started = time.monotonic()
        while True:
            self.failures += 1
            delay = self.backoff()
            if time.monotonic() - started + delay > limit:
                raise RegistryUnavailableError(f"{first}; gave up after {time.monotonic() - started:.0f} s "
                                               f"(registry_wait_seconds = {limit:g}): this machine has no last "
                                               f"known good version of {self.model}@{self.alias} to serve meanwhile")
            log.warning("the registry is unreachable (%s); retrying in %.0f s", first, delay)
            time.sleep(delay)
            try:
                self.sync()
            except RegistryUnavailableError:
                continue
            self.failures = 0
            return

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sync)
                if self.failures:
                    log.info("the registry is reachable again for %s after %d failed read(s)", self.model,
                                self.failures)
                self.failures = 0
            except Exception as exc:  # keep serving what is loaded; back off and try again
                self.failures += 1
                if self.failures == 1 or self.failures % 10 == 0:
                    log.warning("could not follow the registry for %s (still serving %s; next try in %.0f s): %s",
                                self.model, sorted(self.core.routing.predictors), self.backoff(), exc)
            await asyncio.sleep(self.backoff())


def known_good_file(ws: Workspace, model: str, alias: str) -> Path:
    """What this machine served last for ``model@alias``, so it can serve it while the registry is down."""
    return ws.context.home / "serving" / f"{model}@{alias}.json"


def read_known_good(path: Path) -> dict[str, Any]:
    """The last known good routing written by :meth:`RegistryFollower.sync` ({} if none or unreadable)."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


class _CoreTarget:
    """An in-process :class:`~loopml.serving.core.ServingCore` seen by :func:`loopml.serving.reconcile.reconcile`."""

    def __init__(self, follower: RegistryFollower) -> None:
        self.follower = follower
        self.core = follower.core

    def served(self) -> tuple[dict[int, float], int | None, set[int]]:
        routing = self.core.routing
        return dict(routing.weights), routing.shadow, set(routing.predictors)

    def load(self, version: int) -> None:
        model = self.follower.ws.registry.get(self.follower.model, version)
        path = artifact_file(self.follower.ws, model)
        data = path.read_bytes()
        pin = self.follower.pinned_sha256
        if pin is not None and hashlib.sha256(data).hexdigest() != pin:
            raise ConfigError(f"refusing to serve {model.ref}: its artifact's sha256 is "
                              f"{hashlib.sha256(data).hexdigest()}, the deployment pins {pin}")
        self.core.add_version(version, Predictor.from_bytes(data))
        self.follower.files[version] = str(path)

    def route(self, weights: Mapping[int, float], shadow: int | None) -> None:
        self.core.set_traffic(weights)
        self.core.set_shadow(shadow)

    def drop(self, version: int) -> None:
        self.core.remove_version(version)
        self.follower.files.pop(version, None)


def parse_target(target: str) -> tuple[str, str, int | None]:
    """``churn@production`` -> ("churn", "production", None); a bare name follows ``production``;
    ``churn:3`` pins version 3 (alias "v3", nothing followed)."""
    if ":" in target and "@" not in target:
        name, _, raw = target.partition(":")
        if not name or not raw.lstrip("v").isdigit():
            raise ConfigError(f"{target!r}: pin a version as NAME:VERSION, e.g. churn:3")
        return name, f"v{int(raw.lstrip('v'))}", int(raw.lstrip("v"))
    name, _, alias = target.partition("@")
    if not name:
        raise ConfigError(f"{target!r}: give a model as NAME@ALIAS, e.g. churn@production")
    return name, alias or "production", None


DEFAULT_PORT = 8080


def build_service(ws: Workspace, target: str, *, host: str | None = None, port: int | None = None,
                  token: str | None = None, canary_weight: float | None = None,
                  poll_seconds: float | None = None, insecure: bool = False,
                  wait: bool = False, sha256: str | None = None) -> tuple[Any, RegistryFollower, Any]:
    """(uvicorn server, follower, bound socket) for ``target``, defaults from ``[serving.options]``.

    A model or alias that does not exist is an error (``wait``: start anyway, serve the first
    version that gets the alias), as are an empty token and a non-loopback bind without a token
    (unless ``insecure``)."""
    name, alias, pinned = parse_target(target)
    if sha256 is not None and pinned is None:
        raise ConfigError("--sha256 pins an artifact: serve a version (NAME:VERSION), not an alias")
    options = ws.selected["serving"].options  # type: ignore[union-attr]
    if not isinstance(options, BuiltinServingOptions):
        options = BuiltinServingOptions()
    limits = options.limits()
    if token is not None:
        if not token.strip():
            raise ConfigError("the token is empty: give one, or none to serve without one (loopback only)")
        limits = dataclasses.replace(limits, token=token)
    host = host or options.host
    check_exposure(host, limits.token, insecure=insecure or options.insecure)
    log_dir = ws.context.resolve(options.log_dir, "predictions")
    writer = PredictionLogWriter(log_dir, name, sink=ws.store if options.log_to_store else None, threaded=False,
                                 segment_seconds=options.segment_seconds())
    entity, outage = None, None
    try:
        entity = (ws.registry.get(name, pinned) if pinned is not None else
                  ws.registry.get(name, alias=alias)).lineage.get("entity")
    except RegistryUnavailableError as exc:  # serve what this machine served last, or wait a while
        outage = exc
        entity = read_known_good(known_good_file(ws, name, alias)).get("entity")
    except ModelNotFoundError as exc:
        known = sorted({v.name for v in ws.registry.list_versions()})
        if not wait:
            where = (f"{name} has versions, none under {alias!r}: see `loopml models list {name}`" if name in known
                     else f"registered models: {', '.join(known) or 'none yet'}")
            raise ModelNotFoundError(f"nothing to serve for {target}: {exc} ({where}); pass --wait to start "
                                     f"anyway and serve the first version that gets alias {alias!r}") from None
        log.warning("%s has no version under alias %r yet; the server waits for one (--wait)", name, alias)
    core = ServingCore(name, entity=entity, limits=limits, log_writer=writer)
    if ws.config.pipeline is not None and entity:
        view = ws.config.pipeline.features.view
        core.feature_lookup = online_lookup(ws, view)

    if canary_weight is None:
        canary_weight = options.canary_weight
    if canary_weight is not None and not 0 <= canary_weight < 1:
        raise ConfigError(f"canary weight {canary_weight}: give a share from 0 (no canary traffic) up to, "
                          "not including, 1")
    follower = RegistryFollower(ws, core, name, alias, canary_weight=canary_weight,
                                poll_seconds=options.poll_seconds if poll_seconds is None else poll_seconds,
                                pinned=pinned, pinned_sha256=sha256.lower() if sha256 else None)
    if outage is None:
        follower.sync()  # load before accepting: the first request already finds the model
    elif not follower.serve_known_good():
        follower.wait_for_registry(options.registry_wait_seconds, outage)
    tasks: list[asyncio.Task[None]] = []

    def start_following() -> None:
        tasks.append(asyncio.get_running_loop().create_task(follower.run()))

    def stop() -> None:
        for task in tasks:
            task.cancel()
        writer.close()

    app = build_app(core, on_startup=[start_following], on_shutdown=[stop])
    sock = bind(host, port if port is not None else options.port if options.port is not None else DEFAULT_PORT)
    server = draining_server(uvicorn_config(app, limits, core), core, options.drain_seconds)
    return server, follower, sock


def dedicate_process(ws: Workspace) -> None:
    """Tune a process that only serves (``loopml serve``), never one that may also train (the loop's
    in-process server, a test): torch's intra-op threads from ``torch_threads``, and what start-up
    built (modules, the model, the app) frozen out of the garbage collector's walks."""
    import torch

    options = ws.selected["serving"].options  # type: ignore[union-attr]
    threads = options.torch_threads if isinstance(options, BuiltinServingOptions) else 1
    torch.set_num_threads(threads)
    gc.collect()
    gc.freeze()


def serve(ws: Workspace, target: str, **kwargs: Any) -> None:
    """Run until SIGTERM/SIGINT (graceful: requests in flight finish)."""
    server, follower, sock = build_service(ws, target, **kwargs)
    dedicate_process(ws)
    host, port = sock.getsockname()[:2]
    log.info("loopml serving %s on http://%s:%d (POST /predict, /v2 OIP, /metrics)", follower.model, host, port)
    print(f"loopml: serving {target} on http://{host}:{port}", flush=True)
    server.run(sockets=[sock])
