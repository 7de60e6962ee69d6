"""S3 artifact store for loopml (boto3): ``storage.uri = "s3://bucket/prefix"``.

Same layout and promises as the local store, on any S3-compatible service:

* blobs at ``<prefix>/objects/<sha[:2]>/<sha256>``, uploaded with an S3 SHA-256 checksum (multipart
  above ``multipart_threshold_mb``, each part checksummed by S3) and verified again on read;
* each key's manifest at ``<prefix>/refs/<key>.ref``, written last with ``If-None-Match: *`` so a
  key is created exactly once (create-only, race-free across machines);
* the standard retry mode with bounded attempts and connect/read timeouts;
* credentials from the usual AWS chain (env, profile, instance role) unless given as secrets.

boto3 is imported when the store is built, not when the plugin loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from loopml.errors import (
    ConfigError,
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
)
from loopml.keys import content_type, validate_key
from loopml.plugins import hookimpl
from loopml.records import ObjectInfo
from loopml.specs import BackendSpec

CHUNK = 8 << 20


class S3StoreOptions(BaseModel):
    """``[storage.options]`` for ``s3://`` URIs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    uri: str
    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 for MinIO or moto_server
    region: str | None = None
    profile: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    multipart_threshold_mb: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 5

    @field_validator("uri")
    @classmethod
    def _s3_uri(cls, value: str) -> str:
        if not value.startswith("s3://") or len(value) <= 5:
            raise ValueError("must look like s3://bucket or s3://bucket/prefix")
        return value


def parse_uri(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


class S3ArtifactStore:
    """Content-addressed, create-only, verified-on-read artifact store in S3."""

    def __init__(self, options: S3StoreOptions) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.uri = options.uri.rstrip("/")
        self.bucket, self.prefix = parse_uri(options.uri)
        secret = (lambda s: s.get_secret_value() if s else None)  # noqa: E731
        session = boto3.session.Session(
            aws_access_key_id=secret(options.access_key_id),
            aws_secret_access_key=secret(options.secret_access_key),
            aws_session_token=secret(options.session_token),
            region_name=options.region, profile_name=options.profile)
        self.client = session.client(
            "s3", endpoint_url=options.endpoint_url,
            config=Config(retries={"mode": "standard", "max_attempts": options.max_attempts},
                          connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
                          request_checksum_calculation="when_supported"))
        self.transfer = TransferConfig(multipart_threshold=options.multipart_threshold_mb << 20,
                                       multipart_chunksize=max(options.multipart_threshold_mb, 5) << 20)

    # ------------------------------------------------------------------ keys
    def _full(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _ref(self, key: str) -> str:
        return self._full("refs", validate_key(key) + ".ref")

    def _blob(self, sha: str) -> str:
        return self._full("objects", sha[:2], sha)

    def _error(self, exc: Exception, what: str) -> StorageError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        return StorageError(f"S3 {what} failed in {self.uri}: {code}")

    # ------------------------------------------------------------------ writes
    def put(self, key: str, data: bytes | BinaryIO | Path, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        from botocore.exceptions import BotoCoreError, ClientError

        ref_key = self._ref(key)
        with _spooled(data) as (path, sha, size):
            existing = self._read_ref(ref_key, key)
            if existing is not None and existing.sha256 != sha:
                return _same_or_conflict(key, existing, sha)
            try:  # also when the key exists: putting the same bytes again restores a lost blob
                if not self._blob_ok(sha):
                    self.client.upload_file(str(path), self.bucket, self._blob(sha), Config=self.transfer,
                                            ExtraArgs={"ChecksumAlgorithm": "SHA256",
                                                       "ContentType": content_type(key, dict(metadata or {})),
                                                       "Metadata": {"sha256": sha}})
            except (BotoCoreError, ClientError) as exc:
                raise self._error(exc, f"upload of {key!r}") from exc
        if existing is not None:
            return existing
        info = ObjectInfo(key, sha, size, datetime.now(UTC), {str(k): str(v) for k, v in (metadata or {}).items()})
        body = json.dumps({"sha256": sha, "size": size, "created_at": info.created_at.isoformat(),
                           "metadata": dict(info.metadata)}, sort_keys=True).encode()
        try:
            self.client.put_object(Bucket=self.bucket, Key=ref_key, Body=body, IfNoneMatch="*",
                                   ContentType="application/json", ChecksumAlgorithm="SHA256",
                                   Metadata={"content-type": content_type(key, dict(metadata or {}))})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                existing = self._read_ref(ref_key, key)
                if existing is None:  # pragma: no cover - deleted in between
                    raise StorageError(f"object {key!r} changed during write; retry") from None
                return _same_or_conflict(key, existing, sha)
            raise self._error(exc, f"write of {key!r}") from exc
        return info

    def export(self, path: str, data: bytes) -> str:
        """Write ``data`` as a plain object at ``<prefix>/exports/<path>`` with its content type
        (readable by any S3 client; see :mod:`loopml.exports`). Returns its ``s3://`` URI."""
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._full("exports", validate_key(path))
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256",
                                   ContentType=content_type(path))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, f"export of {path!r}") from exc
        return f"s3://{self.bucket}/{key}"

    def url(self, key: str, expires_seconds: int = 7 * 24 * 3600) -> str:
        """A presigned HTTPS link to the object (the blob, served with the key's content type), for
        links in Prefect artifacts and reports: opens in a browser without S3 credentials."""
        info = self.info(key)
        return self.client.generate_presigned_url(
            "get_object", ExpiresIn=int(expires_seconds),
            Params={"Bucket": self.bucket, "Key": self._blob(info.sha256),
                    "ResponseContentType": content_type(key, dict(info.metadata)),
                    "ResponseContentDisposition": "inline"})

    def delete(self, key: str) -> None:
        ref_key = self._ref(key)
        if not self._exists(ref_key):
            raise ObjectNotFoundError(f"no object under key {key!r} in {self.uri}")
        self.client.delete_object(Bucket=self.bucket, Key=ref_key)

    # ------------------------------------------------------------------ reads
    def _exists(self, full_key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=full_key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc, f"HEAD {full_key}") from exc

    def _blob_ok(self, sha: str) -> bool:
        """The blob exists and is the one loopml uploaded (its sha256 metadata matches)."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._blob(sha))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc, f"HEAD {self._blob(sha)}") from exc
        return head.get("Metadata", {}).get("sha256") == sha

    def _read_ref(self, ref_key: str, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            raw = self.client.get_object(Bucket=self.bucket, Key=ref_key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._error(exc, f"read of {key!r}") from exc
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise IntegrityError(f"manifest of {key!r} in {self.uri} is corrupt") from exc
        return ObjectInfo(key, body["sha256"], body["size"], datetime.fromisoformat(body["created_at"]),
                          body.get("metadata", {}))

    def info(self, key: str) -> ObjectInfo:
        info = self._read_ref(self._ref(key), key)
        if info is None:
            raise ObjectNotFoundError(f"no object under key {key!r} in {self.uri}")
        return info

    def exists(self, key: str) -> bool:
        return self._exists(self._ref(key))

    def _stream(self, info: ObjectInfo, sink: Any) -> None:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._blob(info.sha256))["Body"]
        except ClientError as exc:
            raise IntegrityError(f"object {info.key!r}: blob {info.sha256[:12]}… is missing") from exc
        digest = hashlib.sha256()
        for chunk in iter(lambda: body.read(CHUNK), b""):
            digest.update(chunk)
            sink(chunk)
        if digest.hexdigest() != info.sha256:
            raise IntegrityError(f"object {info.key!r} is corrupt: sha256 is {digest.hexdigest()[:12]}…, "
                                 f"expected {info.sha256[:12]}…")

    def get(self, key: str) -> bytes:
        info = self.info(key)
        parts: list[bytes] = []
        self._stream(info, parts.append)
        return b"".join(parts)

    def download(self, key: str, dest: Path) -> ObjectInfo:
        info = self.info(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                self._stream(info, out.write)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        refs = self._full("refs") + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=refs + prefix):
            keys += [obj["Key"] for obj in page.get("Contents", []) if obj["Key"].endswith(".ref")]
        for full in sorted(keys):
            key = full[len(refs):-len(".ref")]
            info = self._read_ref(full, key)
            if info is not None:
                yield info

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.uri!r})"


def _same_or_conflict(key: str, existing: ObjectInfo, sha: str) -> ObjectInfo:
    if existing.sha256 == sha:
        return existing
    raise ObjectExistsError(f"object {key!r} already exists with different content (sha256 "
                            f"{existing.sha256[:12]}…, new {sha[:12]}…); objects are immutable: write under a new key")


@contextlib.contextmanager
def _spooled(data: bytes | BinaryIO | Path) -> Iterator[tuple[Path, str, int]]:
    """A local file holding ``data`` and its sha256 (paths are hashed in place, not copied)."""
    digest = hashlib.sha256()
    if isinstance(data, Path):
        with open(data, "rb") as src:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                digest.update(chunk)
        yield data, digest.hexdigest(), data.stat().st_size
        return
    fd, name = tempfile.mkstemp(prefix="loopml-s3-")
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            chunks = [bytes(data)] if isinstance(data, bytes | bytearray | memoryview) else iter(
                lambda: data.read(CHUNK), b"")
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        yield Path(name), digest.hexdigest(), size
    finally:
        os.unlink(name)


def _factory(options: S3StoreOptions, ctx: Any) -> S3ArtifactStore:
    try:
        return S3ArtifactStore(options)
    except ImportError:
        raise
    except Exception as exc:  # e.g. a profile that does not exist
        raise ConfigError(f"storage: cannot set up the S3 client for {options.uri}: {type(exc).__name__}") from None


@hookimpl
def loopml_artifact_stores() -> list[BackendSpec]:
    return [BackendSpec("s3", _factory, S3StoreOptions, "content-addressed objects in S3 (boto3)",
                        uri_schemes=("s3",), requires=("boto3",))]
