"""Weights & Biases tracker for loopml, over the ``wandb`` SDK.

One W&B run per loopml run, with the loopml run id as the W&B run id (a retried start resumes it).
Params go to the run config, per-step metrics to its history (a metric logged for an earlier step,
such as the gate results after training, goes to the run summary), loopml tags to the run's tags
(``key=value``, only those within W&B's 64-character limit) and all of them to
``config["loopml_tags"]``. The model is an artifact of type ``model`` (named after the loopml model)
whose aliases follow every promotion and rollback; reports are ``report`` artifacts, the model card
a ``model-card``.

A W&B run cannot change once finished, and loopml adds the model card, the validation report and
the registry version after training. So ``end_run`` of a successful run keeps it open until the
loop calls ``flush`` after registration (or the process exits); a failed run finishes at once. A
call for a run finished in another process resumes that run (the same W&B run id; offline, a new
folder that ``wandb sync`` appends to it), never W&B's "run is finished" warning and never another
run. Alias moves are logged the same way, from the run that trained the version.

``mode = "offline"`` (or ``WANDB_MODE=offline``) writes real run files under ``dir`` with no
network; ``wandb sync`` uploads them later. The API key comes from config (a secret) or the
environment and is passed through ``wandb.Settings``: it never enters the run's config, tags or logs.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import struct
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from loopml.context import BackendContext, Workspace
from loopml.plugins import hookimpl
from loopml.records import RunInfo, RunRecord
from loopml.specs import BackendSpec
from loopml_wandb.run_files import merged, read_run_file, segment_order

__all__ = ["WandbOptions", "WandbTracker", "merged", "publish_alias", "read_run_file", "resume"]

log = logging.getLogger(__name__)


class WandbOptions(BaseModel):
    """``[trackers.wandb]`` options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    project: str | None = None  # default: the loopml project name
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None  # default: $WANDB_MODE, else online
    api_key: SecretStr | None = None
    base_url: str | None = None
    dir: Path | None = None  # default: <home>


class WandbTracker:
    name = "wandb"

    def __init__(self, options: WandbOptions, project: str, directory: Path) -> None:
        import wandb  # noqa: F401 - fail at build time if the SDK is missing

        self.options = options
        self.project = options.project or project
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._runs: dict[str, Any] = {}
        self._finished: set[str] = set()
        self._ending: set[str] = set()  # ended FINISHED by loopml, kept open for what comes next
        self._followups: dict[str, Any] = {}  # run id -> follow-up run (the original ended elsewhere)
        self._exit_hook = False
        self._artifacts: dict[str, dict[str, str]] = {}  # run id -> file name -> sha256 logged

    def _settings(self) -> Any:
        import wandb

        kwargs: dict[str, Any] = {"silent": True, "console": "off", "x_disable_stats": True}
        if self.options.api_key is not None:
            kwargs["api_key"] = self.options.api_key.get_secret_value()
        if self.options.base_url:
            kwargs["base_url"] = self.options.base_url
        return wandb.Settings(**kwargs)

    def _run(self, run_id: str) -> Any:
        """The open W&B run to log to: the run itself, or the run resumed if it finished elsewhere."""
        if run_id in self._runs and run_id not in self._finished:
            return self._runs[run_id]
        if run_id not in self._followups:  # the same run, resumed: W&B shows one run, not two
            self._followups[run_id] = resume(self, run_id)
            self._on_exit()
        return self._followups[run_id]

    def _on_exit(self) -> None:
        if not self._exit_hook:
            atexit.register(self.flush)
            self._exit_hook = True

    def start_run(self, run: RunInfo) -> None:
        import wandb

        if run.run_id in self._runs:
            return
        self._runs[run.run_id] = wandb.init(
            project=self.project, entity=self.options.entity, id=run.run_id, name=run.name,
            group=run.experiment, job_type="train", dir=str(self.dir), mode=self.options.mode,
            resume="allow", reinit="create_new", settings=self._settings(),
            config={"loopml_experiment": run.experiment, "loopml_tags": dict(run.tags)},
            tags=_tags(run.tags))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._run(run_id).config.update({k: str(v) for k, v in params.items()}, allow_val_change=False)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        run = self._run(run_id)
        values = {k: float(v) for k, v in metrics.items()}
        if int(step) < int(getattr(run, "step", 0) or 0):  # W&B history only moves forward
            run.summary.update(values)
            return
        run.log(values, step=int(step))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        run = self._run(run_id)
        merged = {**dict(run.config.get("loopml_tags", {})), **{k: str(v) for k, v in tags.items()}}
        run.config.update({"loopml_tags": merged}, allow_val_change=True)
        run.tags = tuple(dict.fromkeys([*run.tags, *_tags(tags)]))

    def log_artifact(self, run_id: str, path: Path, name: str | None = None) -> None:
        """A retried call with the same file (name and bytes) logs nothing new: W&B would record
        a second artifact version of identical content."""
        import wandb

        target = name or Path(path).name
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        logged = self._artifacts.setdefault(run_id, {})
        if logged.get(target) == digest:
            return
        run = self._run(run_id)
        model = run.config.get("loopml_experiment") or self._experiment(run_id)  # a collection per model
        artifact = wandb.Artifact(_artifact_name(f"{model}-{target}" if model else target), type=_artifact_type(target))
        artifact.add_file(str(path), name=target)
        run.log_artifact(artifact)
        logged[target] = digest

    def log_model(self, run_id: str, path: Path, name: str | None = None) -> None:
        """The trained model as a W&B ``model`` artifact named after the model (one artifact, a
        version per distinct file), with the run's fingerprint in its metadata."""
        import wandb

        run = self._run(run_id)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        logged = self._artifacts.setdefault(run_id, {})
        if logged.get("model") == digest:
            return
        tags = dict(run.config.get("loopml_tags", {}))
        artifact = wandb.Artifact(_artifact_name(model_artifact_name(run.config.get("loopml_experiment", "model"))),
                                  type="model", metadata={"sha256": digest, "loopml_run_id": run_id,
                                                          "fingerprint": tags.get("loopml.fingerprint", "")})
        artifact.add_file(str(path), name=name or Path(path).name)
        run.log_artifact(artifact, aliases=["candidate"])
        logged["model"] = digest

    def run_url(self, run_id: str) -> str | None:
        """The run's page on W&B when online (offline runs have none until ``wandb sync``)."""
        if (self.options.mode or os.environ.get("WANDB_MODE")) in ("offline", "disabled"):
            return None
        run = self._runs.get(run_id)
        return getattr(run, "url", None) if run is not None else None

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        if run_id in self._finished or run_id in self._ending:
            return
        if status == "FINISHED" and run_id in self._runs:
            self._ending.add(run_id)  # finished by flush(): registration adds the card and report
            self._on_exit()
            return
        self._finish(run_id, status)

    def _finish(self, run_id: str, status: str = "FINISHED") -> None:
        self._ending.discard(run_id)
        if run_id in self._runs and run_id not in self._finished:
            self._runs[run_id].finish(exit_code=0 if status == "FINISHED" else 1)
            self._finished.add(run_id)
            self._wait_until_written(run_id)
        followup = self._followups.pop(run_id, None)
        if followup is not None:
            followup.finish(exit_code=0)

    def flush(self, run_id: str | None = None) -> None:
        """Finish what loopml ended (one run, or all): everything logged so far is in the run."""
        for rid in [run_id] if run_id else sorted({*self._ending, *self._followups}):
            if rid in self._ending or rid in self._followups:
                self._finish(rid)

    def _wait_until_written(self, run_id: str, timeout: float = 30.0) -> None:
        """``finish()`` returns before W&B's service has flushed the run file; wait for its exit
        record so that everything logged is on disk when ``end_run`` returns."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if read_run_file(self.run_file(run_id))["exit_code"] is not None:
                    return
            except (FileNotFoundError, ValueError, struct.error):
                pass
            time.sleep(0.05)
        log.warning("W&B run %s: run file not complete after %.0f s", run_id, timeout)

    def _experiment(self, run_id: str) -> str | None:
        """The model a run trained, from its first run file (a resumed run starts with no config)."""
        try:
            return read_run_file(self.run_files(run_id)[0])["config"].get("loopml_experiment")
        except (FileNotFoundError, ValueError, struct.error):
            return None

    def run_files(self, run_id: str) -> list[Path]:
        """The run's local ``.wandb`` transaction logs, oldest first: the run, then each time it
        was resumed (registration in another process, an alias move). ``wandb sync`` sends them
        all to the one run."""
        found = [(segment_order(f.parent.name, run_id), f) for f in self.dir.glob(f"wandb/*/run-{run_id}.wandb")
                 if not f.parent.is_symlink()]  # latest-run points at one of them
        if not found:
            raise FileNotFoundError(f"no W&B run directory for {run_id} under {self.dir / 'wandb'}")
        return [f for _, f in sorted(found)]

    def run_file(self, run_id: str) -> Path:
        """The newest ``.wandb`` transaction log of the run (the one being written)."""
        return self.run_files(run_id)[-1]

    def get_run(self, run_id: str) -> RunRecord:
        """Read a run back from its local W&B transaction log (works offline)."""
        self.flush(run_id)
        content = merged([read_run_file(f) for f in self.run_files(run_id)])
        config = content["config"]
        tags = dict(config.get("loopml_tags", {}))
        params = {k: str(v) for k, v in config.items()
                  if k not in ("loopml_tags", "loopml_experiment", "_wandb")}
        return RunRecord(run_id, str(config.get("loopml_experiment", "")), content["name"],
                         "FINISHED" if content["exit_code"] == 0 else
                         ("RUNNING" if content["exit_code"] is None else "FAILED"),
                         datetime.fromtimestamp(content["start"], UTC), None, params,
                         {k: tuple(v) for k, v in content["history"].items()}, tags,
                         tuple(content["artifacts"]))

    def list_runs(self, experiment: str | None = None) -> list[RunRecord]:
        ids = sorted({f.stem.removeprefix("run-") for f in self.dir.glob("wandb/*run-*/run-*.wandb")})
        runs = [self.get_run(i) for i in ids]
        return [r for r in runs if experiment is None or r.experiment == experiment]


def _tag(key: str, value: str) -> str | None:
    """``key=value`` if it fits W&B's 64-character tag limit; else None (it stays in the config)."""
    tag = f"{key}={value}"
    return tag if len(tag) <= 64 else None


def _tags(tags: Mapping[str, str]) -> list[str]:
    return [t for t in (_tag(k, v) for k, v in tags.items()) if t is not None]


def model_artifact_name(model: str) -> str:
    return f"{model}-model"


def _artifact_type(name: str) -> str:
    if name.endswith(".html"):
        return "report"
    if name == "model_card.md":
        return "model-card"
    return "file"


def _artifact_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _factory(options: WandbOptions, ctx: Any) -> WandbTracker:
    return WandbTracker(options, ctx.project, ctx.resolve(options.dir, ""))


def resume(tracker: WandbTracker, run_id: str) -> Any:
    """The W&B run ``run_id`` again, to log what happened after it finished (its registration in
    another process, an alias move): the same run in W&B, not a new one. Offline, W&B writes a new
    run folder with the same id, which ``wandb sync`` appends to the run."""
    import wandb

    return wandb.init(project=tracker.project, entity=tracker.options.entity, id=run_id, dir=str(tracker.dir),
                      mode=tracker.options.mode, resume="allow", reinit="create_new", settings=tracker._settings())


def publish_alias(tracker: WandbTracker, model: Any, alias: str, artifact: bytes) -> str:
    """Move the ``model`` artifact's ``alias`` to this version from the run that trained it (resumed):
    the same bytes logged again with the alias, which W&B resolves to the existing version (same
    digest), so no new version and no new run. W&B's SDK always adds ``latest`` to what a run logs;
    only its online API moves an alias without logging, and offline there is no API. A version with
    no training run (registered by hand) uses one run per model, ``<model>-registry``. Returns the
    W&B run id."""
    import wandb

    run_id = model.run_id or f"{_artifact_name(model.name)}-registry"
    run = resume(tracker, run_id)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.pt2"
            path.write_bytes(artifact)
            art = wandb.Artifact(_artifact_name(model_artifact_name(model.name)), type="model",
                                 metadata={"sha256": model.artifact_sha256, "loopml_run_id": model.run_id,
                                           "loopml_version": model.version})
            art.add_file(str(path), name="model.pt2")
            run.log_artifact(art, aliases=[alias, f"loopml-v{model.version}"])
    finally:
        run.finish()
    return run_id


@hookimpl
def loopml_after_promotion(event: Any, context: Any) -> None:
    """The ``model`` artifact's aliases follow loopml's (production, canary) after each move."""
    if context is None or "wandb" not in context.config.trackers:
        return

    if event.to_version is None:  # a cleared alias: W&B's SDK can add aliases to a logged artifact,
        return                    # not remove them from one (offline); the next move re-points it
    options = WandbOptions.model_validate(context.config.trackers["wandb"] or {})
    ws = Workspace(context.config)
    model = ws.registry.get(event.name, event.to_version)
    tracker = _factory(options, BackendContext(context.project, context.root, context.home))
    publish_alias(tracker, model, event.alias, ws.store.get(model.artifact_key))


@hookimpl
def loopml_trackers() -> list[BackendSpec]:
    return [BackendSpec("wandb", _factory, WandbOptions, "Weights & Biases runs (online or offline)",
                        requires=("wandb",))]
