"""Object keys: relative POSIX paths that cannot escape a store root, on any backend."""

from __future__ import annotations

import re

from loopml.errors import UnsafeKeyError

MAX_KEY_LENGTH = 512
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+@-]*$")


def validate_key(key: str) -> str:
    """Return ``key`` if it is safe, else raise :class:`UnsafeKeyError` saying why.

    Rejected: empty keys, absolute paths, ``..`` / ``.`` / empty segments, backslashes, NUL and
    control characters, percent-encoding (``%2e%2e``), and segments starting with a dot (hidden
    files and the store's own temporary files).
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
        if not _SEGMENT.match(segment):
            raise UnsafeKeyError(
                f"object key {key!r}: segment {segment!r} must start with a letter or digit and use "
                "only letters, digits and . _ = + @ -"
            )
    return key
