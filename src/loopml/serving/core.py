"""The serving core: routing, dynamic micro-batching, logging and metrics, independent of HTTP."""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from loopml import prediction_records
from loopml.artifacts import Predictor, Signature
from loopml.errors import LoopmlError
from loopml.serving.metrics import ServerMetrics
from loopml.serving.online import LocalLookup
from loopml.serving.requests import INT64, ModelFailed, RequestError, ServerLimits, short, validate_rows
from loopml.serving.routing import Routing


@dataclass
class _Pending:
    predictor: Predictor
    rows: list[dict[str, Any]]
    future: asyncio.Future[np.ndarray]


def _refreeze() -> None:
    """Collect, then freeze what is left. A loaded program is tens of thousands of long-lived
    objects; freezing them keeps the cyclic GC from rescanning them in full collections (seen as
    ~100 ms answer stalls). Frozen objects are never collected, so everything is thawed first:
    the cycles of a version that was dropped are freed instead of held for the process's life
    (seen as +0.2 MB per hot swap)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ServingCore:
    """What is served and how: routing, batching, logging, metrics. Transport-independent."""

    def __init__(self, model_name: str, *, entity: str | None = None, limits: ServerLimits | None = None,
                 log_writer: Any = None) -> None:
        self.model_name = model_name
        self.entity = entity
        self.limits = limits or ServerLimits()
        self.routing = Routing({}, {})
        self._exported_versions: set[int] = set()
        self.log_writer = log_writer
        self.metrics = ServerMetrics(model_name)
        self.feature_lookup: Callable[[list[Any]], Any] | None = None
        self.requests_served = 0
        self._rng = random.Random(0)
        self._children: dict[int, tuple[Any, Any, Any]] = {}
        self._request_children: dict[tuple[str, int, str], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._dropped = self.metrics.log_dropped.labels(model_name)
        self._dropped_seen = 0  # the gauge takes a lock: set it when the count moves, not per request
        self._inflight = 0
        self.active = 0  # prediction requests received and not yet answered (batching decisions)
        self.draining = False  # shutting down: answers close their connection, readiness is 503
        self.server_state: Any = None  # uvicorn's, set by the protocol: its request tasks tell concurrency
        self._queue: asyncio.Queue[_Pending] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ versions and traffic
    def add_version(self, version: int, predictor: Predictor) -> None:
        _refreeze()
        current = self.routing
        weights = dict(current.weights) if current.weights else {version: 1.0}
        self.routing = Routing({**current.predictors, version: predictor}, weights, current.shadow)
        self._export_traffic()

    def set_traffic(self, weights: Mapping[int, float]) -> None:
        current = self.routing
        unknown = set(weights) - set(current.predictors)
        if unknown:
            raise LoopmlError(f"cannot route to version(s) {sorted(unknown)}: not deployed "
                              f"(deployed: {sorted(current.predictors)})")
        if not any(w > 0 for w in weights.values()) or any(w < 0 for w in weights.values()):
            raise LoopmlError("traffic weights must be >= 0 and at least one > 0")
        self.routing = Routing(current.predictors, dict(weights), current.shadow)
        self._export_traffic()

    def set_shadow(self, version: int | None) -> None:
        """Mirror every request to ``version`` (None: stop). Its answers go to the prediction log
        with ``"shadow": true`` and the answer production gave; clients never see them."""
        current = self.routing
        if version is not None and version not in current.predictors:
            raise LoopmlError(f"cannot shadow version {version}: not deployed (deployed: {sorted(current.predictors)})")
        self.routing = Routing(current.predictors, current.weights, version)

    def remove_version(self, version: int) -> None:
        current = self.routing
        if current.weights.get(version, 0) > 0:
            raise LoopmlError(f"version {version} still receives traffic; move traffic first")
        self.routing = Routing({v: p for v, p in current.predictors.items() if v != version},
                               {v: w for v, w in current.weights.items() if v != version},
                               None if current.shadow == version else current.shadow)
        self._export_traffic()
        _refreeze()  # the dropped version's objects were frozen too: thaw them so they can be freed

    def _export_traffic(self) -> None:
        total = sum(self.routing.weights.values()) or 1.0
        for gone in self._exported_versions - set(self.routing.weights):
            self.metrics.traffic.remove(self.model_name, str(gone))
        self._exported_versions = set(self.routing.weights)
        for version, weight in self.routing.weights.items():
            self.metrics.traffic.labels(self.model_name, str(version)).set(weight / total)

    def concurrency(self) -> int:
        """Requests the server is handling right now (uvicorn's request tasks, when known)."""
        state = self.server_state
        return len(state.tasks) if state is not None else self.active

    def count_request(self, route: str, status: int, version: str = "") -> None:
        key = (route, status, version)
        child = self._request_children.get(key)
        if child is None:
            child = self.metrics.requests.labels(self.model_name, route, str(status), version)
            self._request_children[key] = child
        child.inc()

    def observe_request(self, version: str, seconds: float) -> None:
        """A prediction answered by ``version``, timed from first byte in to last byte out."""
        child = self._latency_children.get(version)
        if child is None:
            child = self._latency_children[version] = self.metrics.latency.labels(self.model_name, version)
        child.observe(seconds)

    # ------------------------------------------------------------ scoring
    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """Start the batcher (and the log tick) on the running event loop, once per loop."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:  # first request, or a new event loop
            self._queue = asyncio.Queue()
            self._loop = loop
            self._batcher = loop.create_task(self._batch_loop())
            if self.log_writer is not None and getattr(self.log_writer, "_thread", True) is None:
                self._schedule_log_tick(loop)
        return loop

    async def _score(self, predictor: Predictor, rows: list[dict[str, Any]]) -> np.ndarray:
        loop = self._bind_loop()
        assert self._queue is not None
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.put_nowait(_Pending(predictor, rows, future))
        return await future

    def _schedule_log_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        def tick() -> None:
            try:
                self.log_writer.tick()
            finally:
                if self._loop is loop:
                    loop.call_later(self.log_writer.flush_seconds, tick)

        loop.call_later(self.log_writer.flush_seconds, tick)

    async def _batch_loop(self) -> None:
        """Score whatever is queued as one batch per model version; no artificial wait."""
        queue = self._queue
        assert queue is not None
        while True:
            first = await queue.get()
            if self.concurrency() > queue.qsize() + 1:  # others are being read: let them join this batch
                await asyncio.sleep(0)
            batch = [first]
            while not queue.empty() and sum(len(p.rows) for p in batch) < 1024:
                batch.append(queue.get_nowait())
            by_model: dict[int, list[_Pending]] = {}
            for item in batch:
                by_model.setdefault(id(item.predictor), []).append(item)
            for items in by_model.values():
                rows = [r for item in items for r in item.rows]
                try:
                    scores = items[0].predictor.predict_rows(rows)
                except Exception as exc:
                    for item in items:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                self.metrics.batch.labels(self.model_name).observe(len(rows))
                start = 0
                for item in items:
                    if not item.future.done():
                        item.future.set_result(scores[start:start + len(item.rows)])
                    start += len(item.rows)

    async def predict(self, payload: Any, *, version: int | None = None,
                      request_id: str | None = None) -> dict[str, Any]:
        routing = self.routing  # one consistent snapshot for the whole request
        if not routing.predictors:
            raise RequestError(503, "no model version is deployed yet")
        if version is None:
            version = routing.pick(self._rng)
        elif version not in routing.predictors:
            raise RequestError(404, f"version {version} of {self.model_name!r} is not served; "
                                    f"served: {sorted(routing.predictors)}")
        predictor = routing.predictors[version]
        extra = (self.entity,) if self.entity else ()
        try:
            lookups = self._entity_rows(payload) if self.feature_lookup is not None else []
            if lookups and isinstance(self.feature_lookup, LocalLookup):  # microseconds: a thread hop costs more
                payload = self._fill_online_features(payload, lookups, predictor.signature)
            elif lookups:  # only rows that carry just the entity id need the online store (off the event loop)
                payload = await asyncio.to_thread(self._fill_online_features, payload, lookups, predictor.signature)
            rows = validate_rows(payload, predictor.signature, max_rows=self.limits.max_rows, extra_allowed=extra,
                                 max_string_chars=self.limits.max_string_chars)
        except RequestError as exc:  # refused after routing: the version it was meant for is known
            exc.version = version
            raise
        self._bind_loop()
        t0 = time.perf_counter()
        self._inflight += 1
        try:
            if self.concurrency() <= 1 and (self._queue is None or self._queue.empty()):
                scores = predictor.predict_rows(rows)  # alone: no batch to join, skip the queue hop
            else:
                scores = await self._score(predictor, rows)
            answer = predictor.answer(scores)
        except Exception as exc:  # the model failed on valid input: count it against its version
            self._log_failure(version, rows, exc, request_id)
            raise ModelFailed(version, exc) from exc
        finally:
            self._inflight -= 1
        elapsed = time.perf_counter() - t0
        self._observe(version, predictor.signature, rows, answer, elapsed, request_id)
        self.requests_served += 1
        shadow = routing.shadow
        if shadow is not None and shadow != version and shadow in routing.predictors:
            task = asyncio.get_running_loop().create_task(
                self._mirror(shadow, routing.predictors[shadow], rows, version, answer, request_id))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        return {"model": self.model_name, "version": version, **answer}

    def _log_failure(self, version: int, rows: list[dict[str, Any]], exc: BaseException, request_id: str | None,
                     shadow: bool = False) -> None:
        self.metrics.errors.labels(self.model_name, str(version)).inc(len(rows))
        if self.log_writer is not None:
            self.log_writer.write(prediction_records.failed(ts=time.time(), version=version, request_id=request_id,
                                                            rows=len(rows), error=type(exc).__name__, shadow=shadow))

    async def _mirror(self, version: int, predictor: Predictor, rows: list[dict[str, Any]], primary: int,
                      primary_answer: Mapping[str, Any], request_id: str | None) -> None:
        """Score a copy of a request on the shadow version, after the client has its answer."""
        t0 = time.perf_counter()
        try:
            answer = predictor.answer(await self._score(predictor, rows))
        except Exception as exc:
            self._log_failure(version, rows, exc, request_id, shadow=True)
            return
        elapsed = time.perf_counter() - t0
        self.metrics.shadow_latency.labels(self.model_name, str(version)).observe(elapsed)
        if self.log_writer is None:
            return
        self.log_writer.write(prediction_records.answered(
            ts=time.time(), version=version, request_id=request_id, features=predictor.signature.features,
            rows=rows, answer=answer, latency_ms=elapsed * 1000 / len(rows), shadow=True, primary_version=primary,
            primary_outputs=[out["output"] for out in prediction_records.outputs_of(primary_answer)]))

    def _observe(self, version: int, sig: Signature, rows: list[dict[str, Any]], answer: Mapping[str, Any],
                 elapsed: float, request_id: str | None) -> None:
        v = str(version)
        m = self.metrics
        children = self._children.get(version)
        if children is None:  # label lookups take a lock: do them once per version
            children = (m.model_latency.labels(self.model_name, v), m.rows.labels(self.model_name, v),
                        m.values.labels(self.model_name, v))
            self._children[version] = children
        latency, counted, values = children
        latency.observe(elapsed)
        counted.inc(len(rows))
        if "probabilities" in answer:
            for label in answer["predictions"]:
                m.classes.labels(self.model_name, v, label).inc()
        else:
            for value in answer["predictions"]:
                values.observe(value)
        unknown_per_row = []
        pairs = list(zip(sig.categorical, sig._lookups, strict=True))
        for row in rows:
            unknown = [c for c, lookup in pairs if row[c] not in lookup]
            for feature in unknown:
                m.unknown.labels(self.model_name, feature).inc()
            unknown_per_row.append(unknown)
        if self.log_writer is None:
            return
        self.log_writer.write(prediction_records.answered(
            ts=time.time(), version=version, request_id=request_id, features=sig.features, rows=rows,
            answer=answer, latency_ms=elapsed * 1000 / len(rows), entity=self.entity, unknown=unknown_per_row))
        dropped = getattr(self.log_writer, "dropped", 0)
        if dropped != self._dropped_seen:
            self._dropped_seen = dropped
            self._dropped.set(dropped)

    def _entity_rows(self, payload: Any) -> list[int]:
        """Indices of the rows that carry only the entity id (checked: an id the store can hold)."""
        if not self.entity or not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
            return []
        rows = payload["rows"]
        if len(rows) > self.limits.max_rows:
            return []  # refused by validate_rows, naming the limit
        by_id = [i for i, r in enumerate(rows) if isinstance(r, dict) and len(r) == 1 and self.entity in r]
        for i in by_id:
            value = rows[i][self.entity]
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise RequestError(422, f"rows[{i}].{self.entity}: expected an id (integer or string), "
                                        f"got {short(value)}")
            if isinstance(value, int) and not -INT64 <= value < INT64:
                raise RequestError(422, f"rows[{i}].{self.entity}: {short(value)} is outside the 64-bit "
                                        "integer range of ids")
            if isinstance(value, str) and not 0 < len(value) <= self.limits.max_string_chars:
                raise RequestError(422, f"rows[{i}].{self.entity}: an id of 1 to "
                                        f"{self.limits.max_string_chars} characters is required")
        return by_id

    def _fill_online_features(self, payload: dict[str, Any], by_id: list[int], sig: Signature) -> Any:
        """Rows that carry only the entity id get their features from the online store."""
        assert self.feature_lookup is not None
        rows = payload["rows"]
        wanted = set(sig.features)
        found = self.feature_lookup([rows[i][self.entity] for i in by_id])
        filled = list(rows)
        for i, record in zip(by_id, found, strict=True):
            values = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items() if k in wanted}
            if any(v is None or v != v for v in values.values()):
                raise RequestError(404, f"rows[{i}]: no online features for {self.entity}="
                                        f"{short(rows[i][self.entity])}; is the feature view materialized?")
            filled[i] = {**rows[i], **values}
        return {**payload, "rows": filled}

    def health(self) -> dict[str, Any]:
        routing = self.routing
        return {"status": "ok" if routing.predictors else "empty", "model": self.model_name,
                "versions": sorted(routing.predictors), "traffic": {str(k): v for k, v in routing.weights.items()},
                "shadow": routing.shadow,
                "requests_served": self.requests_served}
