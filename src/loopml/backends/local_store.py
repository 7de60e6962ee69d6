"""The embedded artifact store: content-addressed files on local disk.

The rules of content addressing are :class:`loopml.backends.content_store.ContentAddressedStore`'s;
this module is the local folder they run on (:class:`LocalBlobs`), plus ``gc`` and ``export``.

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
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict

from loopml.backends.content_store import CHUNK, ContentAddressedStore, Staged, write_hashed
from loopml.keys import validate_key
from loopml.records import GcResult

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


class LocalBlobs:
    """A local folder as a :class:`~loopml.backends.content_store.BlobSpace`."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.uri = root.as_uri()
        self.fsync = fsync
        for sub in ("objects", "refs", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def ref_path(self, key: str) -> Path:
        return self.root / "refs" / (key + REF_SUFFIX)

    def blob_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    @contextlib.contextmanager
    def locked(self, *, exclusive: bool) -> Iterator[None]:
        """Writers share gc.lock; gc() holds it alone. Released by the kernel if the process dies."""
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        return self.locked(exclusive=False)

    def _tmp(self, suffix: str = "") -> tuple[int, Path]:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix=".part-", suffix=suffix)
        return fd, Path(name)

    @contextlib.contextmanager
    def staged(self, data: bytes | BinaryIO | Path) -> Iterator[Staged]:
        fd, tmp = self._tmp()
        try:
            yield write_hashed(data, fd, tmp, fsync=self.fsync)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def keep_blob(self, staged: Staged, content_type: str) -> None:
        blob = self.blob_path(staged.sha256)
        blob.parent.mkdir(exist_ok=True)
        os.replace(staged.path, blob)
        if self.fsync:
            _fsync_dir(blob.parent)

    def confirm_blob(self, staged: Staged, content_type: str) -> None:
        """Nothing to do: a local gc takes the store's lock that every put holds."""

    def read_blob(self, sha256: str) -> Iterator[bytes]:
        with open(self.blob_path(sha256), "rb") as src:
            while chunk := src.read(CHUNK):
                yield chunk

    def create_ref(self, key: str, body: bytes, content_type: str) -> bool:
        ref_path = self.ref_path(key)
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
                return False
            if self.fsync:
                _fsync_dir(ref_path.parent)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def read_ref(self, key: str) -> bytes | None:
        try:
            return self.ref_path(key).read_bytes()
        except FileNotFoundError:
            return None

    def has_ref(self, key: str) -> bool:
        return self.ref_path(key).is_file()

    def remove_ref(self, key: str) -> bool:
        try:
            self.ref_path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def ref_keys(self, prefix: str) -> Iterator[str]:
        refs = self.root / "refs"
        for path in sorted(refs.rglob("*" + REF_SUFFIX)):
            key = path.relative_to(refs).as_posix()[: -len(REF_SUFFIX)]
            if key.startswith(prefix):
                yield key


class LocalArtifactStore(ContentAddressedStore):
    """Content-addressed, create-only, verified-on-read artifact store on a local filesystem."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync
        self.local = LocalBlobs(self.root, fsync=fsync)
        super().__init__(self.local)

    def _blob_path(self, sha256: str) -> Path:
        return self.local.blob_path(sha256)

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

    def gc(self, grace_seconds: float | None = None) -> GcResult:
        """Remove blobs no key refers to and temp files of writers that died.

        Safe while other processes put: it waits for writes in flight and holds new ones back until
        it is done (see the module docstring), so no grace period is needed (``grace_seconds`` is
        ignored)."""
        blobs = temps = freed = 0
        with self.local.locked(exclusive=True):
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

    def __repr__(self) -> str:
        return f"LocalArtifactStore({str(self.root)!r})"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
