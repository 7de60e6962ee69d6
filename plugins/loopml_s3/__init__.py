"""S3 artifact store for loopml (boto3): ``storage.uri = "s3://bucket/prefix"``.

Same layout and promises as the local store, on any S3-compatible service:

* blobs at ``<prefix>/objects/<sha[:2]>/<sha256>``, uploaded with an S3 SHA-256 checksum (multipart
  above ``multipart_threshold_mb``, each part checksummed by S3) and verified again on read;
* each key's manifest at ``<prefix>/refs/<key>.ref``, written last with ``If-None-Match: *`` so a
  key is created exactly once (create-only, race-free across machines);
* the standard retry mode with bounded attempts and connect/read timeouts;
* credentials from the usual AWS chain (env, profile, instance role) unless given as secrets.

The rules of content addressing (create-only refs, verified reads, healing re-puts) are loopml's
own (:mod:`loopml.backends.content_store`); this plugin is the bucket they run on, a thin adapter
over boto3 (:class:`S3Blobs`). boto3 is imported when the store is built, not when the plugin loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from loopml.backends.content_store import ContentAddressedStore, Staged, chunks_of, write_hashed
from loopml.errors import ConfigError, StorageError
from loopml.keys import content_type, validate_key
from loopml.plugins import hookimpl
from loopml.records import GcResult
from loopml.specs import BackendSpec

CHUNK = 8 << 20
MISSING = ("404", "NoSuchKey", "NotFound")
EXISTS = ("PreconditionFailed", "ConditionalRequestConflict")


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
    gc_grace_seconds: float = Field(default=3600.0, ge=0, description="`loopml store gc`: a blob no key names is "
                                    "quarantined only once no writer touched it for this long, and deleted "
                                    "only this long after that")
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


def _code(exc: StorageError) -> str | None:
    """The S3 error code behind a StorageError raised by :meth:`S3Blobs.calling`, if any."""
    response = getattr(exc.__cause__, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


class S3Blobs:
    """An S3 bucket (and prefix) as a :class:`~loopml.backends.content_store.BlobSpace`."""

    def __init__(self, options: S3StoreOptions) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.options = options
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

    def full(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def ref(self, key: str) -> str:
        return self.full("refs", key + ".ref")

    def blob(self, sha: str) -> str:
        return self.full("objects", sha[:2], sha)

    @contextlib.contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """boto3's errors as one StorageError naming the call and the store."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise StorageError(f"S3 {what} failed in {self.uri}: {code}") from exc

    def writing(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def staged(self, data: bytes | BinaryIO | Path) -> Iterator[Staged]:
        """A local file holding ``data`` and its sha256 (a Path is hashed in place, not copied)."""
        digest = hashlib.sha256()
        if isinstance(data, Path):
            for chunk in chunks_of(data):
                digest.update(chunk)
            yield Staged(data, digest.hexdigest(), data.stat().st_size)
            return
        fd, name = tempfile.mkstemp(prefix="loopml-s3-")
        try:
            yield write_hashed(data, fd, Path(name))
        finally:
            os.unlink(name)

    def touch(self, sha: str) -> str:
        return self.full("touched", sha[:2], sha)

    def keep_blob(self, staged: Staged, content_type: str) -> None:
        if self._blob_ok(staged.sha256):  # already there, and the bytes loopml uploaded
            # A writer about to name an existing blob says so first, so that a gc that found it
            # unreferenced leaves it alone for the grace period (see S3ArtifactStore.gc).
            with self.calling(f"touch of blob {staged.sha256[:12]}"):
                self.client.put_object(Bucket=self.bucket, Key=self.touch(staged.sha256), Body=b"")
            return
        self._upload(staged, content_type)

    def confirm_blob(self, staged: Staged, content_type: str) -> None:
        """The ref is written; a gc that listed refs before it may have quarantined or deleted the
        blob since ``keep_blob`` saw it. Put it back from quarantine, or upload the bytes again,
        so that a put never returns a key naming a missing blob, however slow the writer was."""
        if self._blob_ok(staged.sha256) or self.restore(staged.sha256):
            return
        self._upload(staged, content_type)

    def _upload(self, staged: Staged, content_type: str) -> None:
        with self.calling(f"upload of blob {staged.sha256[:12]}"):
            self.client.upload_file(str(staged.path), self.bucket, self.blob(staged.sha256), Config=self.transfer,
                                    ExtraArgs={"ChecksumAlgorithm": "SHA256", "ContentType": content_type,
                                               "Metadata": {"sha256": staged.sha256}})

    def _blob_ok(self, sha: str) -> bool:
        """The blob exists and is the one loopml uploaded (its sha256 metadata matches)."""
        head = self._head(self.blob(sha))
        return head is not None and head.get("Metadata", {}).get("sha256") == sha

    def _head(self, full_key: str) -> dict[str, Any] | None:
        try:
            with self.calling(f"HEAD {full_key}"):
                return self.client.head_object(Bucket=self.bucket, Key=full_key)
        except StorageError as exc:
            if _code(exc) in MISSING:
                return None
            raise

    def quarantined(self, sha: str) -> str:
        return self.full("quarantine", sha[:2], sha)

    def restore(self, sha: str) -> bool:
        """Put a quarantined blob back (a key names it after all); False if there is none."""
        from botocore.exceptions import ClientError

        try:
            self.client.copy_object(Bucket=self.bucket, Key=self.blob(sha),
                                    CopySource={"Bucket": self.bucket, "Key": self.quarantined(sha)})
        except ClientError:
            return False
        with contextlib.suppress(ClientError):
            self.client.delete_object(Bucket=self.bucket, Key=self.quarantined(sha))
        return True

    def read_blob(self, sha256: str) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.blob(sha256))["Body"]
        except ClientError:
            # A gc quarantined it while a writer named it: put it back. Whether this reader or
            # another one restored it first, the blob is read again from its place.
            self.restore(sha256)
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self.blob(sha256))["Body"]
            except ClientError as exc:
                raise FileNotFoundError(self.blob(sha256)) from exc
        yield from iter(lambda: body.read(CHUNK), b"")

    def create_ref(self, key: str, body: bytes, content_type: str) -> bool:
        try:
            with self.calling(f"write of {key!r}"):
                self.client.put_object(Bucket=self.bucket, Key=self.ref(key), Body=body, IfNoneMatch="*",
                                       ContentType="application/json", ChecksumAlgorithm="SHA256",
                                       Metadata={"content-type": content_type})
        except StorageError as exc:
            if _code(exc) in EXISTS:
                return False
            raise
        return True

    def read_ref(self, key: str) -> bytes | None:
        try:
            with self.calling(f"read of {key!r}"):
                return self.client.get_object(Bucket=self.bucket, Key=self.ref(key))["Body"].read()
        except StorageError as exc:
            if _code(exc) in MISSING:
                return None
            raise

    def has_ref(self, key: str) -> bool:
        return self._head(self.ref(key)) is not None

    def remove_ref(self, key: str) -> bool:
        if not self.has_ref(key):
            return False
        with self.calling(f"delete of {key!r}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.ref(key))
        return True

    def objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under the full ``prefix`` (key, size, last modified)."""
        with self.calling(f"listing of {prefix!r}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])

    def ref_keys(self, prefix: str) -> Iterator[str]:
        refs = self.full("refs") + "/"
        keys = []
        with self.calling(f"listing of {prefix!r}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                               Prefix=refs + prefix):
                keys += [obj["Key"] for obj in page.get("Contents", []) if obj["Key"].endswith(".ref")]
        for full in sorted(keys):
            yield full[len(refs):-len(".ref")]


class S3ArtifactStore(ContentAddressedStore):
    """Content-addressed, create-only, verified-on-read artifact store in S3."""

    def __init__(self, options: S3StoreOptions) -> None:
        self.s3 = S3Blobs(options)
        self.client, self.bucket, self.prefix = self.s3.client, self.s3.bucket, self.s3.prefix
        super().__init__(self.s3)

    def _blob(self, sha: str) -> str:
        return self.s3.blob(sha)

    def export(self, path: str, data: bytes) -> str:
        """Write ``data`` as a plain object at ``<prefix>/exports/<path>`` with its content type
        (readable by any S3 client; see :mod:`loopml.exports`). Returns its ``s3://`` URI."""
        key = self.s3.full("exports", validate_key(path))
        with self.s3.calling(f"export of {path!r}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256",
                                   ContentType=content_type(path))
        return f"s3://{self.bucket}/{key}"

    def url(self, key: str, expires_seconds: int = 7 * 24 * 3600) -> str:
        """A presigned HTTPS link to the object (the blob, served with the key's content type), for
        links in Prefect artifacts and reports: opens in a browser without S3 credentials."""
        info = self.info(key)
        return self.client.generate_presigned_url(
            "get_object", ExpiresIn=int(expires_seconds),
            Params={"Bucket": self.bucket, "Key": self.s3.blob(info.sha256),
                    "ResponseContentType": content_type(key, dict(info.metadata)),
                    "ResponseContentDisposition": "inline"})

    def gc(self, grace_seconds: float | None = None) -> GcResult:
        """Remove blobs no key names, safe beside writers on other machines.

        In two passes, so that no race between a sweep and a writer can lose bytes a key names:

        1. A blob no ref names, that neither changed nor was touched (a writer reusing an existing
           blob touches it before writing its ref) for ``grace_seconds`` (``gc_grace_seconds``,
           default an hour), is moved to ``quarantine/``, not deleted.
        2. At a later gc, a quarantined blob that a ref now names (a writer won the race) is put
           back; one still unnamed after the grace period is deleted for good.

        Meanwhile a reader that finds a blob missing restores it from quarantine, a writer never
        reuses a quarantined blob (it uploads the bytes again), and a writer checks its blob once
        its ref exists (restoring or uploading it again), so that even a writer slower than the
        grace period never leaves a key naming a missing blob."""
        grace = self.s3.options.gc_grace_seconds if grace_seconds is None else grace_seconds
        now = datetime.now(UTC)  # before the refs are listed: a ref this listing misses came later
        live = {info.sha256 for info in self.list()}

        def old(when: datetime) -> bool:
            return (now - when).total_seconds() >= grace

        blobs = freed = 0
        for obj in self.s3.objects(self.s3.full("quarantine") + "/"):  # pass 2
            sha = obj["Key"].rsplit("/", 1)[-1]
            if sha in live:
                self.s3.restore(sha)
            elif old(obj["LastModified"]):
                with self.s3.calling(f"delete of quarantined blob {sha[:12]}"):
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                blobs += 1
                freed += int(obj.get("Size", 0))
        touched = {obj["Key"].rsplit("/", 1)[-1]: obj["LastModified"]
                   for obj in self.s3.objects(self.s3.full("touched") + "/")}
        for obj in self.s3.objects(self.s3.full("objects") + "/"):  # pass 1
            sha = obj["Key"].rsplit("/", 1)[-1]
            if sha in live or not old(obj["LastModified"]) or not old(touched.get(sha, obj["LastModified"])):
                continue
            with self.s3.calling(f"quarantine of blob {sha[:12]}"):
                self.client.copy_object(Bucket=self.bucket, Key=self.s3.quarantined(sha),
                                        CopySource={"Bucket": self.bucket, "Key": obj["Key"]})
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
        for sha, last in touched.items():  # markers of blobs named again or gone
            if old(last):
                with self.s3.calling(f"delete of touch marker {sha[:12]}"):
                    self.client.delete_object(Bucket=self.bucket, Key=self.s3.touch(sha))
        return GcResult(blobs, 0, freed)

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.uri!r})"


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
