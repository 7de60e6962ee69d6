"""Content addressing, written once for every artifact store.

A key names a small JSON ref ``{sha256, size, created_at, metadata}``; the bytes live once, as a
blob named by their sha256. :class:`ContentAddressedStore` holds the rules every store keeps: keys
are validated, a blob is complete before its ref exists (so a key is visible only once its bytes
are), a ref is create-only (putting other bytes under a key is an error; the same bytes are a no-op
that also heals a lost blob), and every read verifies the sha256.

Where the bytes and refs live is a :class:`BlobSpace`, a small interface: a local folder
(:mod:`loopml.backends.local_store`) or an S3 bucket (plugin ``loopml_s3``) each implement it in a
few calls of their own API.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from loopml.errors import IntegrityError, ObjectExistsError, ObjectNotFoundError, StorageError
from loopml.keys import content_type, validate_key
from loopml.records import ObjectInfo

CHUNK = 1 << 20


@dataclass(frozen=True)
class Staged:
    """Bytes written to a local file while they were hashed, ready to become a blob."""

    path: Path
    sha256: str
    size: int


class BlobSpace(Protocol):
    """Where a content-addressed store keeps blobs and refs."""

    uri: str

    def writing(self) -> ContextManager[None]:
        """Held around a whole put (a local store's shared gc lock)."""

    def staged(self, data: bytes | BinaryIO | Path) -> ContextManager[Staged]:
        """``data`` on local disk with its sha256 (a Path may be hashed in place)."""

    def keep_blob(self, staged: Staged, content_type: str) -> None:
        """Make blob ``staged.sha256`` hold these bytes (replacing a damaged one)."""

    def confirm_blob(self, staged: Staged, content_type: str) -> None:
        """Called once a put's ref exists: make sure its blob is still there, keeping the staged
        bytes again if a collector on another machine swept it between ``keep_blob`` and the ref."""

    def read_blob(self, sha256: str) -> Iterator[bytes]:
        """The blob's bytes in chunks; FileNotFoundError when it is missing."""

    def create_ref(self, key: str, body: bytes, content_type: str) -> bool:
        """Write ref ``key`` only if it does not exist, atomically; False when it exists."""

    def read_ref(self, key: str) -> bytes | None:
        """The ref's bytes, or None."""

    def has_ref(self, key: str) -> bool: ...

    def remove_ref(self, key: str) -> bool:
        """Delete ref ``key``; False when there was none."""

    def ref_keys(self, prefix: str) -> Iterator[str]:
        """Every key whose ref exists, starting with ``prefix``, sorted."""


class ContentAddressedStore:
    """The :class:`~loopml.protocols.ArtifactStore` verbs over a :class:`BlobSpace`."""

    def __init__(self, blobs: BlobSpace) -> None:
        self.blobs = blobs
        self.uri = blobs.uri

    # ------------------------------------------------------------------ writes
    def put(self, key: str, data: bytes | BinaryIO | Path, *,
            metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        validate_key(key)
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        kind = content_type(key, meta)
        with self.blobs.writing(), self.blobs.staged(data) as staged:
            existing = self._info(key)
            if existing is not None and existing.sha256 != staged.sha256:
                return _same_or_conflict(key, existing, staged.sha256)
            # Always the fresh bytes: identical content costs little, and putting the same bytes
            # again heals a blob that was lost or damaged.
            self.blobs.keep_blob(staged, kind)
            if existing is not None:
                return existing
            info = ObjectInfo(key, staged.sha256, staged.size, datetime.now(UTC), meta)
            if self.blobs.create_ref(key, _ref_body(info), kind):
                self.blobs.confirm_blob(staged, kind)
                return info
            existing = self._info(key)  # another writer created the key first
            if existing is None:  # pragma: no cover - deleted between the two calls
                raise StorageError(f"object {key!r} changed during write; retry")
            return _same_or_conflict(key, existing, staged.sha256)

    def delete(self, key: str) -> None:
        if not self.blobs.remove_ref(validate_key(key)):
            raise ObjectNotFoundError(f"no object under key {key!r} in {self.uri}")

    # ------------------------------------------------------------------ reads
    def _info(self, key: str) -> ObjectInfo | None:
        raw = self.blobs.read_ref(key)
        if raw is None:
            return None
        try:
            body = json.loads(raw)
            return ObjectInfo(key, body["sha256"], body["size"], datetime.fromisoformat(body["created_at"]),
                              body.get("metadata", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"manifest of {key!r} in {self.uri} is corrupt: {exc}") from exc

    def info(self, key: str) -> ObjectInfo:
        info = self._info(validate_key(key))
        if info is None:
            raise ObjectNotFoundError(f"no object under key {key!r} in {self.uri}")
        return info

    def exists(self, key: str) -> bool:
        return self.blobs.has_ref(validate_key(key))

    def _verified(self, info: ObjectInfo) -> Iterator[bytes]:
        digest = hashlib.sha256()
        try:
            for chunk in self.blobs.read_blob(info.sha256):
                digest.update(chunk)
                yield chunk
        except FileNotFoundError:
            raise IntegrityError(f"object {info.key!r}: blob {info.sha256[:12]}… is missing") from None
        if digest.hexdigest() != info.sha256:
            raise IntegrityError(f"object {info.key!r} is corrupt: sha256 is {digest.hexdigest()[:12]}…, "
                                 f"expected {info.sha256[:12]}…")

    def get(self, key: str) -> bytes:
        return b"".join(self._verified(self.info(key)))

    def download(self, key: str, dest: Path) -> ObjectInfo:
        """Stream the object to ``dest`` (atomically), verifying its sha256."""
        info = self.info(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in self._verified(info):
                    out.write(chunk)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key in self.blobs.ref_keys(prefix):
            info = self._info(key)
            if info is not None:
                yield info

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _ref_body(info: ObjectInfo) -> bytes:
    return json.dumps({"sha256": info.sha256, "size": info.size, "created_at": info.created_at.isoformat(),
                       "metadata": dict(info.metadata)}, sort_keys=True).encode()


def _same_or_conflict(key: str, existing: ObjectInfo, sha: str) -> ObjectInfo:
    if existing.sha256 == sha:
        return existing
    raise ObjectExistsError(f"object {key!r} already exists with different content (sha256 "
                            f"{existing.sha256[:12]}…, new {sha[:12]}…); objects are immutable: write under a new key")


def write_hashed(data: bytes | BinaryIO | Path, fd: int, path: Path, *, fsync: bool = False) -> Staged:
    """Write ``data`` to the open file ``fd`` (at ``path``) while hashing it; closes ``fd``."""
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb") as out:
        for chunk in chunks_of(data):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        if fsync:
            os.fsync(out.fileno())
    return Staged(path, digest.hexdigest(), size)


def chunks_of(data: bytes | BinaryIO | Path) -> Iterator[bytes]:
    """``data`` in chunks: bytes, a binary file, or a Path."""
    if isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif isinstance(data, Path):
        with open(data, "rb") as src:
            while chunk := src.read(CHUNK):
                yield chunk
    elif callable(getattr(data, "read", None)):
        while chunk := data.read(CHUNK):
            yield chunk
    else:
        raise TypeError(f"put() takes bytes, a binary file or a Path, not {type(data).__name__}")
