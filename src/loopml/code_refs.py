"""Code a project names by import path: the factory it points at, and a fingerprint of its source.

A fingerprint is what makes an unchanged ``loopml run`` skip training: it changes when the file that
defines the factory (or loopml's own loop) changes, and only then.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopml.errors import ConfigError


def import_factory(path: str, key: str = "pipeline.model.options.module") -> Callable[..., Any]:
    """``'pkg.mod:attr'`` -> the object; a clear :class:`ConfigError` naming the key otherwise."""
    if ":" not in path:
        raise ConfigError(f"{key}: {path!r} must look like 'package.module:function'")
    mod_name, attr = path.split(":", 1)
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:
        raise ConfigError(f"{key}: cannot import module {mod_name!r} ({type(exc).__name__}: {exc}); "
                          "check the path and that the project folder or package is importable") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: {path!r} is a {type(obj).__name__}, not a callable factory")
    return obj


def code_fingerprint(obj: Any) -> str:
    """sha256 of the source file that defines ``obj`` (its qualified name if there is none)."""
    name = f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    try:
        target = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
        source = Path(inspect.getsourcefile(target) or "").read_bytes()
    except (TypeError, OSError):
        source = b""
    return hashlib.sha256(name.encode() + b"\n" + source).hexdigest()
