"""Loading the configuration: the file, the selected profile, the environment, then validation.

Errors name the key, the file and, for a value set in the environment, the variable (never its
value: environment variables carry secrets more often than files do).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from loopml.config import CONFIG_FILE, ENV_PREFIX, BackendChoice, LoopmlConfig
from loopml.errors import ConfigError


def find_config_file(start: Path | None = None) -> Path | None:
    """``$LOOPML_CONFIG``, else ``loopml.toml`` in ``start`` or its parents."""
    env = os.environ.get("LOOPML_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"LOOPML_CONFIG points at {env!r}, which is not a file")
        return path
    try:
        here = (start or Path.cwd()).resolve()
    except FileNotFoundError:  # the folder the shell stands in was deleted (a re-created project)
        raise ConfigError("the current folder no longer exists (was it deleted and made again?): `cd` into the "
                          "project again, or pass --config PATH") from None
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _EnvironmentSettings(BaseSettings, LoopmlConfig):
    """The config schema as pydantic-settings sees it: ``LOOPML__SECTION__KEY`` variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False,
                                      extra="forbid")


class _EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping instead of ``os.environ``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(_EnvironmentSettings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, False, False, None)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``LOOPML__A__B=value`` as ``{"a": {"b": value}}``, typed the pydantic-settings way: a value is
    parsed as JSON only where the schema wants a list or table there (a token ``12345`` stays a
    string); inside backend ``options``, which their own models validate, JSON objects and arrays
    are decoded and scalars stay strings for the backend's model to convert."""
    values = _decode_tables(_EnvironmentSource(environ)())
    known = set(LoopmlConfig.model_fields)
    for name, raw in environ.items():  # an unknown top-level key is an error, not silently ignored
        head = name[len(ENV_PREFIX):].split("__")[0].lower() if name.upper().startswith(ENV_PREFIX) else ""
        if head and head not in known:
            values[head] = raw
    return values


def _decode_tables(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _decode_tables(v) for k, v in value.items()}
    if isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


MOVED_KEYS = {
    **{f"training.{k}": "set it in [pipeline.model.options] (options of the trainer)"
       for k in ("epochs", "batch_size", "learning_rate", "hidden_units")},
    "training.holdout_fraction": "use [pipeline.training.holdout] fraction = ...",
    "gates.min_auc": "use [pipeline.gates] thresholds = { auc = ... }",
}
"""Keys of loopml 0.1 that moved, with where to put them now (named in the error)."""


def _env_paths(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Config paths set by environment variables, with the variable's name."""
    return {tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__") if p): name
            for name in environ if name.startswith(ENV_PREFIX)}


def _known_keys(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """The keys allowed where ``loc`` points (its last part excluded), following nested sections."""
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return []
        model = sub
    return list(model.model_fields)


def did_you_mean(word: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a close match, else ``""``."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _format_errors(exc: ValidationError, where: str, from_env: Mapping[tuple[str, ...], str] | None = None) -> str:
    lines = [f"invalid configuration in {where}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        loc = tuple(str(p) for p in err["loc"])
        env_name = next((name for path, name in (from_env or {}).items() if loc[:len(path)] == path), None)
        if env_name:
            key += f" (set by ${env_name})"
        if env_name and err["type"] not in ("extra_forbidden", "missing", "value_error"):
            # Environment variables carry secrets more often than files: name it, never echo it.
            lines.append(f"  - {key}: {err['msg']}")
            continue
        if err["type"] == "extra_forbidden":
            moved = MOVED_KEYS.get(".".join(str(p) for p in err["loc"][-2:]))
            hint = did_you_mean(str(loc[-1]), _known_keys(LoopmlConfig, loc)) if loc else ""
            lines.append(f"  - {key}: " + (f"moved: {moved}" if moved else
                                            f"unknown key{hint or '; remove it or check its spelling'}"))
        elif err["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        elif err["type"] == "value_error":  # a cross-field rule; its message names the key
            lines.append(f"  - {key}.{err['msg'].removeprefix('Value error, ')}")
        elif "options" in err["loc"]:  # may hold credentials: never echo the value
            lines.append(f"  - {key}: {err['msg']}")
        else:
            lines.append(f"  - {key}: {err['msg']} (got {str(err.get('input'))[:80]!r})")
    return "\n".join(lines)


_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]+)@")


def redact_url_credentials(value: Any) -> Any:
    """``https://user:pass@host`` -> ``https://***@host`` in every string of a nested structure."""
    if isinstance(value, str):
        return _URL_USERINFO.sub(lambda m: m["scheme"] + "***@", value)
    if isinstance(value, dict):
        return {k: redact_url_credentials(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_url_credentials(v) for v in value]
    return value


REPLACED_WITH_THEIR_BACKEND = (("pipeline", "model", "trainer", "options"), ("registry", "backend", "options"),
                               ("feature_store", "backend", "options"), ("serving", "backend", "options"))
"""(section..., chooser, options): a profile choosing another backend gets none of the base's options,
which belonged to the backend it replaced (a base MLP's ``hidden_units`` is no option of a team's module)."""


TASK_BOUND_GATES = ("thresholds", "max_fairness_gap")
"""Gates in the units of one task's metrics (``auc = 0.7``, an AUC gap): a profile that changes the
task gets none of the base's, as a profile that changes the trainer gets none of its options."""


def _without_replaced_sections(base: dict[str, Any], profile: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    pipeline, changed = out.get("pipeline"), profile.get("pipeline")
    if (isinstance(pipeline, dict) and isinstance(changed, Mapping) and "task" in changed
            and changed["task"] != pipeline.get("task") and isinstance(pipeline.get("gates"), dict)):
        for gate in TASK_BOUND_GATES:
            pipeline["gates"].pop(gate, None)
    for *path, chooser, options in REPLACED_WITH_THEIR_BACKEND:
        base_section, profile_section = out, profile
        for part in path:
            base_section = base_section.get(part) if isinstance(base_section, dict) else None
            profile_section = profile_section.get(part) if isinstance(profile_section, Mapping) else None
        if (isinstance(base_section, dict) and isinstance(profile_section, Mapping) and chooser in profile_section
                and profile_section[chooser] != base_section.get(chooser)):
            base_section.pop(options, None)
    return out


def defined_profiles(path: Path | str) -> list[str]:
    """The names of the ``[profiles.*]`` tables in a config file, sorted."""
    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_FILE
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []  # load_config reports these with the file's name
    profiles = raw.get("profiles", {})
    return sorted(profiles) if isinstance(profiles, dict) else []


def _default_backends(raw: dict[str, Any]) -> None:
    """A backend table that sets only options (``LOOPML__SERVING__OPTIONS__PORT=9000`` with no
    ``[serving]`` in the file) keeps the default backend of its kind."""
    for section, field in LoopmlConfig.model_fields.items():
        default = field.default
        if isinstance(default, BackendChoice) and isinstance(raw.get(section), dict):
            raw[section].setdefault("backend", default.backend)


def load_config(
    path: Path | str | None = None,
    *,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoopmlConfig:
    """Load, merge and validate the configuration. Raises :class:`ConfigError` naming the key."""
    environ = os.environ if environ is None else environ
    file = Path(path) if path is not None else find_config_file()
    raw: dict[str, Any] = {}
    if file is not None:
        if file.is_dir():
            file = file / CONFIG_FILE
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {str(file)!r} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                              "save it as UTF-8") from None
    profiles = raw.pop("profiles", {})
    profile = profile or environ.get("LOOPML_PROFILE") or None
    if profile:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "(none defined)"
            raise ConfigError(
                f"profile {profile!r} is not defined in {file or 'the config'}; "
                f"defined profiles: {known}. Add a [profiles.{profile}] table or unset LOOPML_PROFILE"
            )
        raw = _deep_merge(_without_replaced_sections(raw, profiles[profile]), profiles[profile])
    raw = _deep_merge(raw, _env_overrides(environ))
    if overrides:
        raw = _deep_merge(raw, overrides)
    _default_backends(raw)
    root = file.parent.resolve() if file is not None else Path.cwd().resolve()
    where = str(file) if file else "defaults"
    if profile:
        where += f" (profile {profile!r})"
    try:
        config = LoopmlConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, where, _env_paths(environ))) from None
    return config.model_copy(update={"root": root, "source_file": file, "profile": profile})


def validate_options(model: type[BaseModel], options: Mapping[str, Any], where: str) -> BaseModel:
    """Validate backend options; errors name the config key (secrets are never echoed)."""
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        lines = [f"invalid options for {where}:"]
        for err in exc.errors():
            key = ".".join([where, *(str(p) for p in err["loc"])])
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(sorted(model.model_fields)) or "(none)"
                hint = did_you_mean(str(err["loc"][-1]), list(model.model_fields)) if err["loc"] else ""
                lines.append(f"  - {key}: unknown option{hint}; allowed: {allowed}")
            else:
                lines.append(f"  - {key}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


_SECRET_NAME = re.compile(r"token|password|secret|api_key|access_key|credential|private", re.IGNORECASE)
"""Backend options are validated by their own models later; here a setting named like a secret is masked."""


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(value, Mapping) and value:
        out: dict[tuple[str, ...], Any] = {}
        for key, item in value.items():
            out.update(_leaves(item, (*prefix, str(key))))
        return out
    return {prefix: value}


def explain_config(path: Path | str | None = None, *, profile: str | None = None,
                   environ: Mapping[str, str] | None = None) -> list[tuple[str, Any, str]]:
    """Every resolved setting with where its value came from: ``(key, value, source)``, the source
    being the file, ``profile NAME``, the environment variable, or ``default``. Secrets are masked
    and credentials in URLs hidden, as in ``loopml config``."""
    environ = os.environ if environ is None else environ
    config = load_config(path, profile=profile, environ=environ)
    file = config.source_file
    raw = tomllib.loads(file.read_text(encoding="utf-8")) if file is not None else {}
    profiles = raw.pop("profiles", {})
    chosen = config.profile
    from_profile = _leaves(profiles.get(chosen, {})) if chosen else {}
    from_file = _leaves(_without_replaced_sections(raw, profiles.get(chosen, {})) if chosen else raw)
    from_env = _env_paths(environ)
    dumped = config.model_dump(mode="json", exclude={"root", "source_file", "profile"})
    rows = []
    for key, value in sorted(_leaves(dumped).items()):
        env_name = next((name for p, name in from_env.items() if key[:len(p)] == p), None)
        source = (f"${env_name}" if env_name else f"profile {chosen}" if key in from_profile
                  else (file.name if file is not None else "file") if key in from_file else "default")
        shown = "**********" if _SECRET_NAME.search(key[-1]) and value not in (None, "") else \
            redact_url_credentials(value)
        rows.append((".".join(key), shown, source))
    return rows
