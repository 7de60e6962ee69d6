"""Object keys: relative POSIX paths that cannot escape a store root, on any backend."""

from __future__ import annotations

import re

from loopml.errors import UnsafeKeyError

MAX_KEY_LENGTH = 512
MAX_SEGMENT_LENGTH = 200  # file systems allow 255 bytes a name; stores add suffixes (.ref, temp names)
RESERVED_SUFFIX = ".ref"  # the local store keeps a key's pointer in "<key>.ref"
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+@-]*")


def validate_key(key: str) -> str:
    """Return ``key`` if it is safe, else raise :class:`UnsafeKeyError` saying why.

    Rejected: empty keys, absolute paths, ``..`` / ``.`` / empty segments, backslashes, NUL and
    control characters, percent-encoding (``%2e%2e``), and segments starting with a dot (hidden
    files and the store's own temporary files), segments over 200 characters, and segments ending
    in ``.ref`` (reserved: ``zz`` and ``zz.ref/y`` cannot both exist in a file-backed store).
    """
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError(f"object key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise UnsafeKeyError(f"object key is {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise UnsafeKeyError(f"object key {key!r} is absolute; use a relative key like 'models/m.pt'")
    if "\\" in key:
        raise UnsafeKeyError(f"object key {key!r} contains a backslash; use '/' between segments")
    if "%" in key:
        raise UnsafeKeyError(f"object key {key!r} contains '%': percent-encoded keys are not allowed")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafeKeyError(
                f"object key {key!r} has an empty, '.' or '..' segment; keys cannot leave the store root"
            )
        if not _SEGMENT.fullmatch(segment):  # fullmatch: "$" would accept a trailing newline
            raise UnsafeKeyError(
                f"object key {key!r}: segment {segment!r} must start with a letter or digit and use "
                "only letters, digits and . _ = + @ -"
            )
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise UnsafeKeyError(f"object key {key[:60]!r}…: a segment is {len(segment)} characters; the limit is "
                                 f"{MAX_SEGMENT_LENGTH} per segment")
        if segment.endswith(RESERVED_SUFFIX):
            raise UnsafeKeyError(f"object key {key!r}: segment {segment!r} ends in {RESERVED_SUFFIX!r}, which is "
                                 "reserved for the store's pointers; rename it")
    return key


def prefect_artifact_key(name: str) -> str:
    """``name`` as a Prefect artifact key (lowercase letters, digits and dashes only): a model named
    ``churn_model`` publishes ``churn-model-drift``, not an error at the end of a flow."""
    key = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return key or "loopml"


_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json", ".jsonl": "application/x-ndjson",
                  ".md": "text/markdown; charset=utf-8", ".parquet": "application/vnd.apache.parquet",
                  ".csv": "text/csv", ".png": "image/png", ".pt2": "application/zip", ".txt": "text/plain",
                  ".yaml": "application/yaml", ".yml": "application/yaml"}
_BY_NAME = {"MLmodel": "application/yaml"}  # MLflow's model file has no extension: it is YAML


def content_type(key: str, metadata: dict[str, str] | None = None) -> str:
    """The HTTP content type of an object: ``metadata["content-type"]`` if given, else by the key's
    extension (reports are ``text/html``, so a browser shows them), else binary."""
    given = (metadata or {}).get("content-type")
    if given:
        return given
    name = key.rsplit("/", 1)[-1]
    if name in _BY_NAME:
        return _BY_NAME[name]
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _CONTENT_TYPES.get(suffix, "application/octet-stream")
