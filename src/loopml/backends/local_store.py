"""The embedded artifact store: content-addressed files on local disk.

Layout under the root::

    objects/ab/ab12…   blobs named by their sha256 (identical content is stored once)
    refs/<key>.ref     JSON {sha256, size, created_at, metadata}: the key's manifest, written last
    tmp/               partial writes; never listed, swept by gc()
    gc.lock            writers hold it shared, gc() exclusive (flock(2))
    exports/           plain copies of approved models for tools outside loopml (loopml.exports)

A write streams to ``tmp/``, fsyncs, renames the blob into place, then links the ref into place
with a create-only ``link(2)``. A process killed at any point leaves at most a temp file or an
unreferenced blob: a key is visible only once its complete, checksummed blob is. Reads verify the
sha256. Putting bytes again always renames the fresh blob into place, so a re-put heals a blob that
was lost or damaged.

``gc()`` is safe while writers run: it takes ``gc.lock`` exclusively, so it waits for writes in
flight and holds new ones back while it marks and sweeps; every temp file it then sees belongs to a
writer that died. The lock is ``flock(2)``: local filesystems only (not NFS).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict

from loopml.errors import IntegrityError, ObjectExistsError, ObjectNotFoundError, StorageError
from loopml.keys import validate_key
from loopml.records import GcResult, ObjectInfo

CHUNK = 1 << 20
REF_SUFFIX = ".ref"
LOCK_FILE = "gc.lock"


class LocalStoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    uri: str
    fsync: bool = True


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LocalArtifactStore:
    """Content-addressed, create-only, verified-on-read artifact store on a local filesystem."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.uri = self.root.as_uri()
        self.fsync = fsync
        for sub in ("objects", "refs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ paths
    def _ref_path(self, key: str) -> Path:
        return self.root / "refs" / (validate_key(key) + REF_SUFFIX)

    def _blob_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        """Writers share gc.lock; gc() holds it alone. Released by the kernel if the process dies."""
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _tmp(self, suffix: str = "") -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix=".part-", suffix=suffix)
        return fd, Path(name)

    # ------------------------------------------------------------------ writes
    def put(
        self, key: str, data: bytes | BinaryIO | Path, *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        ref_path = self._ref_path(key)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        with self._locked(exclusive=False):
            fd, tmp = self._tmp()
            digest = hashlib.sha256()
            size = 0
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in _chunks(data):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                    out.flush()
                    if self.fsync:
                        os.fsync(out.fileno())
                sha = digest.hexdigest()
                existing = self._read_ref(ref_path)
                if existing is not None and existing.sha256 != sha:
                    return self._same_or_conflict(key, existing, sha)
                blob = self._blob_path(sha)
                blob.parent.mkdir(exist_ok=True)
                # Always the fresh bytes: identical content costs one rename, and a blob that was
                # lost or damaged is healed by putting the same bytes again.
                os.replace(tmp, blob)
                if self.fsync:
                    _fsync_dir(blob.parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            if existing is not None:
                return existing
            info = ObjectInfo(key, sha, size, datetime.now(UTC), meta)
            return self._link_ref(key, ref_path, info)

    def _link_ref(self, key: str, ref_path: Path, info: ObjectInfo) -> ObjectInfo:
        body = json.dumps({"sha256": info.sha256, "size": info.size,
                           "created_at": info.created_at.isoformat(), "metadata": dict(info.metadata)},
                          sort_keys=True).encode()
        fd, tmp = self._tmp(REF_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                if self.fsync:
                    os.fsync(out.fileno())
            ref_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, ref_path)  # create-only and atomic: fails if the key exists
            except FileExistsError:
                existing = self._read_ref(ref_path)
                if existing is None:  # pragma: no cover - deleted between the two calls
                    raise StorageError(f"object {key!r} changed during write; retry") from None
                return self._same_or_conflict(key, existing, info.sha256)
            if self.fsync:
                _fsync_dir(ref_path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return info

    def _same_or_conflict(self, key: str, existing: ObjectInfo, sha: str) -> ObjectInfo:
        if existing.sha256 == sha:
            return existing
        raise ObjectExistsError(
            f"object {key!r} already exists with different content (sha256 {existing.sha256[:12]}…, "
            f"new {sha[:12]}…); objects are immutable: write under a new key"
        )

    def export(self, path: str, data: bytes) -> str:
        """Write ``data`` as a plain file at ``<root>/exports/<path>`` (readable without loopml;
        see :mod:`loopml.exports`), atomically. Returns its ``file://`` URI."""
        target = self.root / "exports" / validate_key(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return target.as_uri()

    def delete(self, key: str) -> None:
        ref_path = self._ref_path(key)
        try:
            ref_path.unlink()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object under key {key!r} in {self.uri}") from None

    def gc(self) -> GcResult:
        """Remove blobs no key refers to and temp files of writers that died.

        Safe while other processes put: it waits for writes in flight and holds new ones back until
        it is done (see the module docstring)."""
        blobs = temps = freed = 0
        with self._locked(exclusive=True):
            live = {info.sha256 for info in self.list()}
            for blob in (self.root / "objects").glob("*/*"):
                if blob.name not in live:
                    freed += _size(blob)
                    blob.unlink(missing_ok=True)
                    blobs += 1
            for tmp in (self.root / "tmp").iterdir():
                freed += _size(tmp)
                tmp.unlink(missing_ok=True)
                temps += 1
        return GcResult(blobs, temps, freed)

    # ------------------------------------------------------------------ reads
    def _read_ref(self, ref_path: Path) -> ObjectInfo | None:
        try:
            raw = json.loads(ref_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise IntegrityError(f"manifest {ref_path} is corrupt: {exc}") from exc
        key = ref_path.relative_to(self.root / "refs").as_posix()[: -len(REF_SUFFIX)]
        return ObjectInfo(key, raw["sha256"], raw["size"], datetime.fromisoformat(raw["created_at"]),
                          raw.get("metadata", {}))

    def info(self, key: str) -> ObjectInfo:
        info = self._read_ref(self._ref_path(key))
        if info is None:
            raise ObjectNotFoundError(f"no object under key {key!r} in {self.uri}")
        return info

    def exists(self, key: str) -> bool:
        return self._ref_path(key).is_file()

    def get(self, key: str) -> bytes:
        info = self.info(key)
        try:
            data = self._blob_path(info.sha256).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"object {key!r}: blob {info.sha256[:12]}… is missing") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != info.sha256:
            raise IntegrityError(
                f"object {key!r} is corrupt: sha256 is {actual[:12]}…, expected {info.sha256[:12]}…"
            )
        return data

    def download(self, key: str, dest: Path) -> ObjectInfo:
        """Stream the object to ``dest`` (atomically), verifying its sha256."""
        info = self.info(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            with os.fdopen(fd, "wb") as out, open(self._blob_path(info.sha256), "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != info.sha256:
                raise IntegrityError(f"object {key!r} is corrupt: sha256 mismatch on download")
            os.replace(tmp, dest)
        except FileNotFoundError:
            raise IntegrityError(f"object {key!r}: blob {info.sha256[:12]}… is missing") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        refs = self.root / "refs"
        for path in sorted(refs.rglob("*" + REF_SUFFIX)):
            key = path.relative_to(refs).as_posix()[: -len(REF_SUFFIX)]
            if key.startswith(prefix):
                info = self._read_ref(path)
                if info is not None:
                    yield info

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _chunks(data: bytes | BinaryIO | Path) -> Iterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif isinstance(data, Path):
        with open(data, "rb") as src:
            while chunk := src.read(CHUNK):
                yield chunk
    elif hasattr(data, "read"):
        while chunk := data.read(CHUNK):
            yield chunk
    else:
        raise TypeError(f"put() takes bytes, a binary file or a Path, not {type(data).__name__}")


