"""Feast feature store for loopml: one feature definition for training and serving.

``apply`` turns a loopml :class:`~loopml.features.FeatureView` into a Feast entity, a file source
and a feature view in a Feast repo under ``repo_path`` (registry file, Parquet offline store,
SQLite online store by default, Redis by config) and runs ``FeatureStore.apply``. Training frames
come from ``get_historical_features`` (Feast's point-in-time join); ``materialize`` fills the online
store; ``online_features`` reads it by entity id, so serving reads the same definition.

The timestamp of each joined feature row is kept as the feature ``<view>__event_timestamp`` so
leakage can be audited: it is never later than the row's label time.

The repo is a complete Feast repo a team can use with Feast's own CLI: ``feature_store.yaml`` and a
definitions file per view (``loopml_<view>.py``) describing exactly what loopml applied, so
``feast plan`` in the repo shows no deletions and ``feast apply`` / ``feast materialize`` work. Its
paths are relative to the repo, so it can be committed or copied; the Feast project is named after
the loopml project, and integer features are ``Int64``. A
Redis connection string is never written to disk: the YAML reads it from
``$LOOPML_FEAST_REDIS_CONNECTION_STRING``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from loopml.errors import ConfigError, DataValidationError
from loopml.features import FeatureView as LoopmlView
from loopml.plugins import hookimpl
from loopml.specs import BackendSpec


class FeastOptions(BaseModel):
    """``[feature_store] backend = "feast"`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    repo_path: Path | None = None  # default: <home>/feast
    project: str | None = None  # default: the loopml project's name, as Feast spells names (churn_example)
    registry: str | None = None  # default: <repo_path>/registry.db; e.g. s3://bucket/feast/registry.db
    redis_connection_string: SecretStr | None = None  # e.g. "redis.internal:6379,password=…"; default: SQLite
    feature_service: str | None = None  # use this service of the team's own repo at repo_path (read only)


class FeastFeatureStore:
    """A loopml FeatureStore over ``feast.FeatureStore`` (local provider)."""

    def __init__(self, options: FeastOptions, repo_path: Path, project: str = "loopml") -> None:
        from feast import FeatureStore
        from feast.repo_config import RepoConfig

        self.repo = repo_path.resolve()
        self.options = options
        self.project = options.project or feast_name(project)
        self.views: dict[str, LoopmlView] = {}
        if options.feature_service is not None:  # the team's repo: read it, never write to it
            if not (self.repo / "feature_store.yaml").is_file():
                raise ConfigError(f"feature_store.options.feature_service = {options.feature_service!r} reads "
                                  f"an existing Feast repo, but {self.repo} has no feature_store.yaml; point "
                                  "repo_path at your Feast repo")
            self.store = FeatureStore(repo_path=str(self.repo))
            self.config = self.store.config
            return
        (self.repo / "data").mkdir(parents=True, exist_ok=True)
        if options.redis_connection_string is not None:
            online: dict[str, Any] = {"type": "redis",
                                      "connection_string": options.redis_connection_string.get_secret_value()}
        else:
            online = {"type": "sqlite", "path": "online.db"}  # paths relative to the repo, as in its files
        self.config = RepoConfig(project=self.project, provider="local",
                                 registry=options.registry or "registry.db",
                                 online_store=online, offline_store={"type": "file"}, repo_path=self.repo,
                                 entity_key_serialization_version=3)
        self.store = FeatureStore(repo_path=str(self.repo), config=self.config)  # relative paths resolve here
        self._write_repo_config()
        self.views: dict[str, LoopmlView] = {}

    def _service_refs(self) -> dict[str, str]:
        """feature name -> ``view:feature`` reference, for every feature of the team's service."""
        service = self.store.get_feature_service(self.options.feature_service)
        return {f.name: f"{proj.name_to_use()}:{f.name}" for proj in service.feature_view_projections
                for f in proj.features}

    def _service_view(self, name: str) -> LoopmlView:
        """A loopml view of the service, for a process that did not apply one (serving)."""
        service = self.store.get_feature_service(self.options.feature_service)
        first = self.store.get_feature_view(service.feature_view_projections[0].name)
        entity = first.entity_columns[0].name
        return LoopmlView(name, entity, "event_timestamp", tuple(self._service_refs()), ())

    def _view(self, name: str) -> LoopmlView:
        if name not in self.views and self.options.feature_service is not None:
            self.views[name] = self._service_view(name)
        if name not in self.views:
            fv = self.store.get_feature_view(name)  # raises if never applied
            tags = fv.tags
            ttl = fv.ttl if fv.ttl and fv.ttl.total_seconds() > 0 else None
            self.views[name] = LoopmlView(name, tags["loopml.entity"], tags["loopml.timestamp"],
                                          tuple(filter(None, tags["loopml.numeric"].split(","))),
                                          tuple(filter(None, tags["loopml.categorical"].split(","))), ttl)
        return self.views[name]

    @staticmethod
    def stamp(view: LoopmlView) -> str:
        return f"{view.name}__event_timestamp"

    def apply(self, view: LoopmlView, source: Any) -> None:
        import pandas as pd
        from feast import Entity, Field, FileSource, ValueType
        from feast import FeatureView as FeastView
        from feast.types import Float64, Int64, String, UnixTimestamp

        if self.options.feature_service is not None:  # the team applies its repo; loopml checks it
            refs = self._service_refs()
            missing = [f for f in view.features if f not in refs]
            if missing:
                raise DataValidationError(
                    f"Feast feature service {self.options.feature_service!r} in {self.repo} lacks feature(s) "
                    f"{missing} of loopml's view {view.name!r}; add them to the service or to "
                    "[pipeline.features]", column=missing[0])
            self.views[view.name] = view
            return

        view.check_source(source)
        frame = source[[view.entity, view.timestamp, *view.features]].copy()
        frame[view.timestamp] = pd.to_datetime(frame[view.timestamp], utc=True)
        integers = tuple(n for n in view.numeric if pd.api.types.is_integer_dtype(frame[n]))
        for name in view.numeric:
            frame[name] = frame[name].astype("Int64" if name in integers else "float64")
        for name in view.categorical:
            frame[name] = frame[name].astype("string")
        frame[self.stamp(view)] = frame[view.timestamp]
        integer_ids = pd.api.types.is_integer_dtype(frame[view.entity])
        if not integer_ids:
            frame[view.entity] = frame[view.entity].astype("string")
        path = self.repo / "data" / f"{view.name}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        entity = Entity(name=view.entity, join_keys=[view.entity],
                        value_type=ValueType.INT64 if integer_ids else ValueType.STRING)
        schema = [Field(name=view.entity, dtype=Int64 if integer_ids else String),
                  *(Field(name=n, dtype=Int64 if n in integers else Float64) for n in view.numeric),
                  *(Field(name=n, dtype=String) for n in view.categorical),
                  Field(name=self.stamp(view), dtype=UnixTimestamp)]
        feast_view = FeastView(
            name=view.name, entities=[entity], ttl=view.ttl or timedelta(0), schema=schema, online=True,
            source=stamped(FileSource(name=f"{view.name}_source", path=source_path(view),
                                      timestamp_field=view.timestamp)),
            tags={"loopml.entity": view.entity, "loopml.timestamp": view.timestamp,
                  "loopml.numeric": ",".join(view.numeric), "loopml.categorical": ",".join(view.categorical)})
        self.store.apply([entity, feast_view])
        self.views[view.name] = view
        _write_atomically(self.repo / f"loopml_{view.name}.py",
                          definitions(view, integer_ids, entity.name, integers))

    def _write_repo_config(self) -> None:
        """``feature_store.yaml``: the same configuration loopml uses, for Feast's CLI."""
        import yaml

        if self.options.redis_connection_string is not None:
            online: dict[str, Any] = {"type": "redis",
                                      "connection_string": "${LOOPML_FEAST_REDIS_CONNECTION_STRING}"}
        else:
            online = {"type": "sqlite", "path": "online.db"}
        body = {"project": self.project, "provider": "local",  # paths relative to this file: commit and copy it
                "registry": self.options.registry or "registry.db",
                "online_store": online, "offline_store": {"type": "file"},
                "entity_key_serialization_version": 3}
        _write_atomically(self.repo / "feature_store.yaml",
                          "# Written by loopml: the Feast repo of this project's feature views.\n"
                          + yaml.safe_dump(body, sort_keys=False))

    def historical_features(self, view_name: str, entities: Any, timestamp_column: str,
                            features: Sequence[str] | None = None) -> Any:
        import pandas as pd

        view = self._view(view_name)
        wanted = list(features or view.features)
        unknown = [f for f in wanted if f not in view.features]
        if unknown:
            raise DataValidationError(f"feature view {view_name!r} in Feast has no feature(s) {unknown}",
                                      column=unknown[0])
        left = entities.reset_index(drop=True).copy()
        left["__loopml_row"] = range(len(left))
        original_ts = left[timestamp_column]
        request = left[[view.entity, "__loopml_row"]].copy()
        request["event_timestamp"] = pd.to_datetime(original_ts, utc=True)
        if self.options.feature_service is not None:
            service_refs = self._service_refs()
            refs = [service_refs[f] for f in wanted]
        else:
            refs = [f"{view_name}:{f}" for f in [*wanted, self.stamp(view)]]
        joined = self.store.get_historical_features(entity_df=request, features=refs,
                                                    full_feature_names=False).to_df()
        if self.options.feature_service is not None:
            # The team's views carry no loopml stamp: a row joined when Feast found any feature for
            # it, as of the label time (Feast's own point-in-time join).
            found = joined[wanted].notna().any(axis=1)
            joined[self.stamp(view)] = joined["event_timestamp"].where(found)
        joined = joined.drop(columns=["event_timestamp", view.entity]).set_index("__loopml_row")
        # Feast may reorder rows (and drops some it cannot match): restore the caller's rows.
        joined = joined.reindex(range(len(left)))
        out = left.drop(columns="__loopml_row")
        for column in [*wanted, self.stamp(view)]:
            out[column] = joined[column].to_numpy()
        out[self.stamp(view)] = pd.to_datetime(out[self.stamp(view)], utc=True)
        return out

    def materialize(self, view_name: str, end: datetime) -> int:
        import pandas as pd

        view = self._view(view_name)
        if self.options.feature_service is not None:
            service = self.store.get_feature_service(self.options.feature_service)
            start = end - (view.ttl or timedelta(days=365))
            self.store.materialize(start_date=start, end_date=end,
                                   feature_views=[p.name for p in service.feature_view_projections])
            return 0  # the team's sources: loopml does not count their entities
        source = pd.read_parquet(self.repo / "data" / f"{view_name}.parquet", columns=[view.entity, view.timestamp])
        start = source[view.timestamp].min().to_pydatetime() - timedelta(seconds=1)
        if view.ttl is not None:  # rows older than the ttl are not served (as the offline join drops them)
            start = max(start, end - view.ttl)
        self.store.materialize(start_date=start, end_date=end, feature_views=[view_name])
        stamps = source[view.timestamp]
        window = (stamps > pd.Timestamp(start)) & (stamps <= pd.Timestamp(end))
        return int(source.loc[window, view.entity].nunique())

    def online_features(self, view_name: str, entity_ids: Sequence[Any]) -> Any:
        view = self._view(view_name)
        rows = [{view.entity: _plain(e)} for e in entity_ids]
        refs = ([self._service_refs()[f] for f in view.features] if self.options.feature_service is not None
                else [f"{view_name}:{f}" for f in view.features])
        frame = self.store.get_online_features(features=refs, entity_rows=rows, full_feature_names=False).to_df()
        return frame[[view.entity, *view.features]]


def feast_name(name: str) -> str:
    """A loopml name as a Feast project name (letters, digits, underscores; SQLite tables take no
    hyphen): ``churn-example`` -> ``churn_example``."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name).lstrip("_")
    return cleaned or "loopml"


SOURCE_STAMP = datetime(2024, 1, 1, tzinfo=UTC)
"""The created/updated time of every source loopml defines. Feast stamps a ``FileSource`` with the
moment the object is built, and a view's source travels with that stamp: once a view has been
materialized, ``feast plan`` compares the repo's sources field by field and reports every view
"Updated" for the stamp alone. A fixed stamp, written in the repo's files too, makes the two equal."""


def stamped(source: Any) -> Any:
    source.created_timestamp = source.last_updated_timestamp = SOURCE_STAMP
    return source


def source_path(view: LoopmlView) -> str:
    """Where a view's rows live, relative to the repo (Feast resolves it there): a repo copied or
    committed elsewhere reads its own copy."""
    return f"data/{view.name}.parquet"


def definitions(view: LoopmlView, integer_ids: bool, entity: str, integers: tuple[str, ...] = ()) -> str:
    """Python definitions Feast's CLI reads: the objects loopml applied, equal field by field."""
    ttl = int(view.ttl.total_seconds()) if view.ttl else 0
    fields = [f"        Field(name={view.entity!r}, dtype={'Int64' if integer_ids else 'String'}),",
              *(f"        Field(name={n!r}, dtype={'Int64' if n in integers else 'Float64'})," for n in view.numeric),
              *(f"        Field(name={n!r}, dtype=String)," for n in view.categorical),
              f"        Field(name={view.name + '__event_timestamp'!r}, dtype=UnixTimestamp),"]
    tags = {"loopml.entity": view.entity, "loopml.timestamp": view.timestamp,
            "loopml.numeric": ",".join(view.numeric), "loopml.categorical": ",".join(view.categorical)}
    return "\n".join([
        f'"""Feature view {view.name!r}, written by loopml (`loopml run` re-applies it): edit the loopml',
        'config, not this file, or loopml will write it again."""',
        "",
        "from datetime import datetime, timedelta, timezone",
        "",
        "from feast import Entity, FeatureView, Field, FileSource, ValueType",
        "from feast.types import Float64, Int64, String, UnixTimestamp",
        "",
        f"{view.entity} = Entity(name={entity!r}, join_keys=[{view.entity!r}], "
        f"value_type=ValueType.{'INT64' if integer_ids else 'STRING'})",
        "",
        f"{view.name}_source = FileSource(name={view.name + '_source'!r}, path={source_path(view)!r}, "
        f"timestamp_field={view.timestamp!r})",
        "# loopml's fixed stamp: Feast would stamp the source with the time this file is read, and plan",
        "# would then report the view updated after every materialization",
        f"{view.name}_source.created_timestamp = {view.name}_source.last_updated_timestamp = "
        f"datetime({SOURCE_STAMP.year}, {SOURCE_STAMP.month}, {SOURCE_STAMP.day}, tzinfo=timezone.utc)",
        "",
        f"{view.name} = FeatureView(",
        f"    name={view.name!r},",
        f"    entities=[{view.entity}],",
        f"    ttl=timedelta(seconds={ttl}),",
        "    schema=[",
        *fields,
        "    ],",
        "    online=True,",
        f"    source={view.name}_source,",
        f"    tags={tags!r},",
        ")",
        "",
    ])


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _factory(options: FeastOptions, ctx: Any) -> FeastFeatureStore:
    return FeastFeatureStore(options, ctx.resolve(options.repo_path, "feast"), ctx.project)


@hookimpl
def loopml_feature_stores() -> list[BackendSpec]:
    return [BackendSpec("feast", _factory, FeastOptions, "Feast (local provider; SQLite or Redis online store)",
                        requires=("feast",))]
