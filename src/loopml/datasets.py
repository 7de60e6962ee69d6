"""Dataset versioning: ingest CSV/Parquet, validate, canonicalise, store by content hash.

A version's id is the sha256 of its canonical Parquet bytes (columns in schema order, types
normalised, rows in source order, files in sorted path order). Re-ingesting identical rows makes
no new version, wherever they come from. Data is written first and the manifest last, so a
version is visible only when complete; a rejected input writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from loopml import canonical, dataset_checks
from loopml.canonical import release_arrow_memory, write_streamed
from loopml.dataset_profile import profile_parquet
from loopml.dataset_rules import ColumnRule, infer_rules
from loopml.errors import (
    DatasetNotFoundError,
    DataValidationError,
    ObjectExistsError,
    ObjectNotFoundError,
)
from loopml.keys import content_type, validate_key
from loopml.records import ColumnSchema, DatasetVersion

if TYPE_CHECKING:
    import pandas as pd

    from loopml.protocols import ArtifactStore

class DatasetCatalog:
    """Dataset versions kept in an artifact store under ``datasets/<name>/<id>/``."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    @staticmethod
    def _prefix(name: str) -> str:
        validate_key(name)
        if "/" in name:
            raise DataValidationError(f"dataset name {name!r} must not contain '/'")
        return f"datasets/{name}/"

    def ingest(
        self,
        name: str,
        source: str | Path,
        *,
        columns: tuple[ColumnRule, ...] | None = None,
    ) -> tuple[DatasetVersion, bool]:
        """Validate and store ``source`` as a version of ``name``. Returns (version, created)."""

        prefix = self._prefix(name)
        files = dataset_checks.resolve_sources(source)
        hashes = [_file_sha256(path) for path in files]  # one pass over the bytes, before any parsing
        seen_key = f"{prefix}sources/{_source_key(hashes, columns)}.json"
        if self.store.exists(seen_key):  # the same bytes under the same rules: that version, no parse
            known = json.loads(self.store.get(seen_key))["id"]
            with contextlib.suppress(DatasetNotFoundError):
                return self._read_manifest(name, known), False
        rules = columns
        if rules is None:  # no declared schema: the first file's values decide the types
            first = dataset_checks.read_file(files[0])
            rules = infer_rules(first)
            del first
        with tempfile.TemporaryDirectory(prefix="loopml-ingest-") as tmp:
            out = Path(tmp) / "data.parquet"
            counts, version_id = write_streamed(files, rules, out)
            release_arrow_memory()
            sources = [{"path": str(path.resolve()), "rows": rows, "sha256": sha}
                       for path, rows, sha in zip(files, counts, hashes, strict=True)]
            base = f"{prefix}{version_id}/"
            remember = functools.partial(self._remember_source, seen_key, version_id)
            if self.store.exists(base + "manifest.json"):
                remember()
                return self._read_manifest(name, version_id), False
            self.store.put(base + "data.parquet", out, metadata={"content-type": content_type("data.parquet")})
            version = DatasetVersion(
                name=name, id=version_id, row_count=sum(counts),
                columns=tuple(ColumnSchema(r.name, r.type, r.nullable) for r in rules),
                profile=profile_parquet(out, rules),
                source={"files": sources, "given": str(source)},
                created_at=datetime.now(UTC), data_key=base + "data.parquet",
            )
        manifest = _manifest_json(version, rules)
        try:
            self.store.put(base + "manifest.json", manifest,
                           metadata={"content-type": "application/json"})
        except ObjectExistsError:  # a concurrent ingest of the same rows won the race
            remember()
            return self._read_manifest(name, version_id), False
        remember()
        return version, True

    def _remember_source(self, key: str, version_id: str) -> None:
        """Source bytes + rules -> version: the next ingest of the same files is one hash pass.
        Written after the manifest, so it only ever names a complete version."""
        with contextlib.suppress(ObjectExistsError):
            self.store.put(key, json.dumps({"id": version_id}).encode(), metadata={"content-type": "application/json"})

    def _read_manifest(self, name: str, version_id: str) -> DatasetVersion:
        key = f"{self._prefix(name)}{version_id}/manifest.json"
        try:
            raw = json.loads(self.store.get(key))
        except ObjectNotFoundError:
            raise DatasetNotFoundError(f"dataset {name!r} has no version {version_id[:12]}") from None
        return DatasetVersion(
            name=raw["name"], id=raw["id"], row_count=raw["row_count"],
            columns=tuple(ColumnSchema(**c) for c in raw["columns"]),
            profile=raw["profile"], source=raw["source"],
            created_at=datetime.fromisoformat(raw["created_at"]), data_key=raw["data_key"],
        )

    def names(self) -> list[str]:
        return sorted({info.key.split("/")[1] for info in self.store.list("datasets/")
                       if info.key.endswith("/manifest.json")})

    def versions(self, name: str) -> list[DatasetVersion]:
        """All versions of ``name``, oldest first."""
        out = [self._read_manifest(name, info.key.split("/")[2])
               for info in self.store.list(self._prefix(name)) if info.key.endswith("/manifest.json")]
        return sorted(out, key=lambda v: v.created_at)

    def get(self, ref: str) -> DatasetVersion:
        """``name`` (latest), ``name@<id prefix>`` or ``name@latest``."""
        name, _, wanted = ref.partition("@")
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "(none yet: run `loopml data ingest`)"
            raise DatasetNotFoundError(f"no dataset named {name!r}; known datasets: {known}")
        if not wanted or wanted == "latest":
            return versions[-1]
        matches = [v for v in versions if v.id.startswith(wanted)]
        if len(matches) != 1:
            problem = "matches no version" if not matches else "is ambiguous"
            raise DatasetNotFoundError(f"dataset reference {ref!r} {problem}; see `loopml data list {name}`")
        return matches[0]

    def load(self, version: DatasetVersion | str) -> pd.DataFrame:
        """The version's rows, verified against its content hash."""
        if isinstance(version, str):
            version = self.get(version)
        return canonical.read_frame(self.store.get(version.data_key))

    def iter_all(self) -> Iterator[DatasetVersion]:
        for name in self.names():
            yield from self.versions(name)


SOURCE_KEY_FORMAT = "loopml.sources/1"


def _source_key(file_hashes: list[str], rules: tuple[ColumnRule, ...] | None) -> str:
    """What makes a version from files: their bytes in order, and the declared rules (None: inferred
    from the bytes, so the bytes decide). Paths are left out: the same files elsewhere match."""
    body = {"format": SOURCE_KEY_FORMAT, "files": file_hashes,
            "rules": None if rules is None else [dataclasses.asdict(r) for r in rules]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_json(version: DatasetVersion, rules: tuple[ColumnRule, ...]) -> bytes:
    body = {
        "name": version.name, "id": version.id, "row_count": version.row_count,
        "columns": [{"name": c.name, "type": c.type, "nullable": c.nullable} for c in version.columns],
        "rules": [{"name": r.name, "min": r.min, "max": r.max,
                   "allowed": list(r.allowed) if r.allowed else None} for r in rules],
        "profile": version.profile, "source": dict(version.source),
        "created_at": version.created_at.isoformat(), "data_key": version.data_key,
    }
    return json.dumps(body, indent=2, sort_keys=True).encode()
