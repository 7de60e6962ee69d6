"""What a request may be: limits, JSON parsing and the check of rows against the model signature."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopml.artifacts import Signature

FLOAT32_MAX = 3.4028234663852886e38
DRAIN_LIMIT = 16 << 20
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
VERSION_PATTERN = re.compile(r"[0-9]{1,9}")  # ASCII only: isdigit() takes "²" too
INT64 = 1 << 63
_STRIP_STRINGS = re.compile(rb'"(?:\\.|[^"\\])*"')
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\x02\x02")


class RequestError(Exception):
    """A client error: HTTP status and a message that names the problem; ``version``: the model
    version the request was routed to before it was refused (its metrics carry it), if any."""

    def __init__(self, status: int, message: str, version: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.version = version


class ModelFailed(Exception):
    """The model raised on valid input: answered 500 and counted against ``version``."""

    def __init__(self, version: int, cause: BaseException) -> None:
        super().__init__(f"version {version} failed: {type(cause).__name__}: {cause}")
        self.version = version
        self.cause = cause


@dataclass(frozen=True)
class ServerLimits:
    """What one request may be and how long it may take."""

    max_body_bytes: int = 1 << 20
    max_rows: int = 1000
    max_string_chars: int = 256
    max_json_depth: int = 32
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 512
    max_headers: int = 100
    max_header_bytes: int = 32 << 10
    max_url_bytes: int = 8 << 10
    token: str | None = field(default=None, repr=False)
    explain: bool = False  # the explain route answers (off: 404 saying how to turn it on)
    explain_max_rows: int = 8
    explain_samples: int = 16


def _reject_constant(name: str) -> float:
    raise RequestError(400, f"JSON literal {name} is not allowed; send finite numbers only")


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays/objects, outside strings (vectorised; cheap on large bodies)."""
    skeleton = _STRIP_STRINGS.sub(b"", raw).translate(_BRACKETS)
    marks = np.frombuffer(skeleton, dtype=np.uint8)
    marks = marks[(marks == 1) | (marks == 2)]
    if not len(marks):
        return 0
    return int(np.cumsum(np.where(marks == 1, 1, -1)).max())


def parse_json(raw: bytes, max_depth: int) -> Any:
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(raw) > max_depth:
        raise RequestError(400, f"JSON is nested deeper than {max_depth} levels")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RequestError:
        raise
    except RecursionError:
        raise RequestError(400, "JSON is nested too deeply") from None
    except ValueError as exc:  # includes integers longer than Python's digit limit
        raise RequestError(400, f"body is not valid JSON: {exc}") from None


def validate_rows(payload: Any, sig: Signature, *, max_rows: int, extra_allowed: Sequence[str] = (),
                  max_string_chars: int = 256) -> list[dict[str, Any]]:
    """Check a request body against the model signature; raise RequestError(422) naming the field."""
    if not isinstance(payload, dict) or "rows" not in payload:
        raise RequestError(422, 'body must be a JSON object {"rows": [{feature: value, ...}]}')
    rows = payload["rows"]
    if not isinstance(rows, list) or not rows:
        raise RequestError(422, "rows must be a non-empty list of objects")
    if len(rows) > max_rows:
        raise RequestError(422, f"rows has {len(rows)} items; at most {max_rows} per request")
    allowed = set(sig.numeric) | set(sig.categorical) | set(extra_allowed)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"rows[{i}] must be an object, got {type(row).__name__}")
        for name in sig.numeric:
            if name not in row:
                raise RequestError(422, f"rows[{i}].{name}: missing (a number is required)")
            value = row[name]
            if isinstance(value, str):  # "12.5", as the CSV held it: ingest read it as a number too
                value = row[name] = _number_text(value, f"rows[{i}].{name}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RequestError(422, f"rows[{i}].{name}: expected a number, got {short(value)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise RequestError(422, f"rows[{i}].{name}: must be finite")
            if abs(value) > FLOAT32_MAX:
                raise RequestError(422, f"rows[{i}].{name}: {short(value)} is outside the float32 range")
        for name in sig.categorical:
            if name not in row:
                raise RequestError(422, f"rows[{i}].{name}: missing (a string is required)")
            value = row[name]
            if not isinstance(value, str):  # 0/1, 2.0, true: the CSV's own values, read as text by ingest
                if isinstance(value, bool):
                    value = row[name] = "true" if value else "false"
                elif isinstance(value, int | float) and (not isinstance(value, float) or math.isfinite(value)):
                    value = row[name] = str(int(value)) if float(value).is_integer() else str(value)
                else:
                    raise RequestError(422, f"rows[{i}].{name}: expected a category (a string, or a number as "
                                            f"the training data held it), got {short(value)}")
            if len(value) > max_string_chars:
                raise RequestError(422, f"rows[{i}].{name}: {len(value)} characters; at most {max_string_chars}")
            if not value.isascii() and not _is_unicode(value):
                raise RequestError(422, f"rows[{i}].{name}: not valid Unicode (a lone surrogate escape?)")
        unknown = [k for k in row if k not in allowed]
        if unknown:
            first = str(sorted(unknown)[0])
            first = first if len(first) <= 64 else first[:64] + "…"
            raise RequestError(422, f"rows[{i}].{first}: unknown field; the model takes "
                                    f"{', '.join(sorted(set(sig.numeric) | set(sig.categorical)))}")
        for name in extra_allowed:
            value = row.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)
                                      or len(str(value)) > max_string_chars):
                raise RequestError(422, f"rows[{i}].{name}: expected an id (integer or short string)")
    return rows


def _number_text(text: str, where: str) -> float:
    """A number written as text, as ingest would read it from a CSV; 422 naming the field otherwise."""
    try:
        number = float(text.strip())
    except ValueError:
        raise RequestError(422, f"{where}: expected a number, got {short(text)}") from None
    if not math.isfinite(number):
        raise RequestError(422, f"{where}: must be finite")
    return number


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, str) or len(value) <= limit else json.dumps(value[:limit])
    return text if len(text) <= limit + 2 else text[:limit] + "…"
