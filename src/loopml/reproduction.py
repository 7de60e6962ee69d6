"""``loopml reproduce NAME:VERSION``: rebuild a registered model from its record alone, and say how close.

The record names everything that went in: the dataset versions (content-addressed, in the store),
the git commit, the profile, the trainer's parameters and seed (in the configuration at that
commit), and the environment. Reproduction checks the commit out into a temporary git worktree,
rebuilds the model there in a process of its own (:mod:`loopml.reproduction_child`), with loopml's
state in a temporary folder so nothing touches the team's store, registry or trackers, and compares:

* ``identical``: the rebuilt artifact has the recorded sha256 (expected on CPU: training is
  deterministic and the export is byte-stable);
* ``equivalent``: the bytes differ but the predictions on the holdout agree within the tolerance;
* ``different``: they do not; the verdict lists what differs and why it may (parameters, the
  training fingerprint, the environment, uncommitted changes at training time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from loopml import canonical
from loopml.artifacts import Predictor
from loopml.errors import LoopmlError
from loopml.stages.training import environment

if TYPE_CHECKING:
    from loopml.context import Workspace
    from loopml.records import ModelVersion

Outcome = Literal["identical", "equivalent", "different"]
DEFAULT_TOLERANCE = 1e-6


class ReproductionError(LoopmlError):
    """A model that cannot be rebuilt from its record (its commit is missing, its config was not committed)."""


@dataclass(frozen=True)
class Reproduction:
    """The verdict of one reproduction."""

    ref: str
    outcome: Outcome
    recorded_sha256: str
    rebuilt_sha256: str
    code: str
    tolerance: float
    holdout_rows: int
    max_prediction_difference: float
    environment_differences: dict[str, tuple[str, str]] = field(default_factory=dict)
    differences: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["environment_differences"] = {k: {"recorded": a, "now": b}
                                          for k, (a, b) in self.environment_differences.items()}
        return out

    def describe(self) -> str:
        head = {"identical": f"{self.ref} reproduced bit for bit (sha256 {self.rebuilt_sha256[:12]})",
                "equivalent": f"{self.ref} reproduced: the bytes differ, the {self.holdout_rows} holdout predictions "
                              f"agree within {self.tolerance:g} (largest difference "
                              f"{self.max_prediction_difference:.3g})",
                "different": f"{self.ref} NOT reproduced: holdout predictions differ by up to "
                             f"{self.max_prediction_difference:.3g} (tolerance {self.tolerance:g})"}[self.outcome]
        lines = [head, f"code: {self.code}"]
        lines += [f"environment: {k} {a} then, {b} now" for k, (a, b) in self.environment_differences.items()]
        lines += [f"differs: {d}" for d in self.differences]
        return "\n".join(lines)


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)


def _checkout(ws: Workspace, commit: str | None, into: Path) -> tuple[Path, str, Path | None]:
    """(project folder to rebuild in, what code that is, worktree to remove afterwards)."""
    root = ws.config.root.resolve()
    top = _git(root, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        return root, "the current folder: the project is not in a git repository", None
    if not commit or commit == "unknown":
        return root, "the current tree: no commit was recorded for this model", None
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise ReproductionError(f"commit {commit} is not in the repository at {top.stdout.strip()}: fetch it "
                                "(git fetch --all) and run reproduce again")
    worktree = into / "src"
    added = _git(root, "worktree", "add", "--detach", str(worktree), commit)
    if added.returncode != 0:
        raise ReproductionError(f"could not check out commit {commit[:12]}: {added.stderr.strip()}")
    project = worktree / root.relative_to(Path(top.stdout.strip()).resolve())
    return project, f"commit {commit[:12]} (checked out in a temporary git worktree)", worktree


def _config_in(project: Path, ws: Workspace, commit: str | None) -> Path:
    source = ws.config.source_file
    name = source.name if source is not None else "loopml.toml"
    config = project / name
    if not config.is_file():
        raise ReproductionError(f"{name} is not in commit {commit}: the configuration the model was trained "
                                "with was never committed, so it cannot be rebuilt from its record")
    return config


def _environment_differences(model: ModelVersion) -> dict[str, tuple[str, str]]:
    now = environment()
    return {k: (str(model.environment.get(k)), str(now[k])) for k in ("python", "torch", "loopml", "platform")
            if k in model.environment and str(model.environment.get(k)) != str(now[k])}


def _run_child(spec: dict[str, Any], project: Path) -> dict[str, Any]:
    spec_file = Path(spec["work"]) / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(project), os.environ.get("PYTHONPATH"))
                                                        if p)}
    done = subprocess.run([sys.executable, "-m", "loopml.reproduction_child", str(spec_file)], cwd=project,
                          env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise ReproductionError(f"rebuilding failed (exit {done.returncode}); its error is printed above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def reproduce(ws: Workspace, name: str, version: int, tolerance: float = DEFAULT_TOLERANCE) -> Reproduction:
    """Rebuild ``name:version`` from its record in a temporary worktree and compare (see the module doc)."""
    model = ws.registry.get(name, version)
    datasets = model.lineage.get("datasets") or {}
    if not {"labels", "features"} <= set(datasets):
        raise ReproductionError(f"{model.ref} has no recorded dataset versions: it was registered without "
                                "lineage, so there is nothing to rebuild it from")
    with tempfile.TemporaryDirectory(prefix="loopml-reproduce-") as tmp:
        work = Path(tmp)
        project, code, worktree = _checkout(ws, model.git_commit, work)
        try:
            spec = {"work": str(work), "original_config": str(ws.config.source_file),
                    "config": str(_config_in(project, ws, model.git_commit)),
                    "profile": model.lineage.get("profile", ws.config.profile), "datasets": datasets,
                    # float sums split across threads round differently: train with the recorded count
                    "torch_threads": model.environment.get("torch_threads")}
            rebuilt = _run_child(spec, project)
            recorded_bytes = ws.store.get(model.artifact_key)
            holdout = canonical.read_frame(work / "holdout.parquet")
            then = Predictor.from_bytes(recorded_bytes).predict_frame(holdout)
            now = Predictor.from_bytes((work / "rebuilt.pt2").read_bytes()).predict_frame(holdout)
        finally:
            if worktree is not None:
                _git(ws.config.root, "worktree", "remove", "--force", str(worktree))
    gap = float(np.max(np.abs(then - now))) if len(holdout) else 0.0
    outcome: Outcome = ("identical" if rebuilt["sha256"] == model.artifact_sha256 else
                        "equivalent" if gap <= tolerance else "different")
    differences = []
    if rebuilt["fingerprint"] != model.lineage.get("fingerprint"):
        differences.append("training fingerprint (data, features, trainer options or code) "
                           f"{str(model.lineage.get('fingerprint'))[:12]} then, {rebuilt['fingerprint'][:12]} now")
    for key in sorted(set(model.params) | set(rebuilt["params"])):
        if _canonical(model.params.get(key)) != _canonical(rebuilt["params"].get(key)):
            differences.append(f"parameter {key}: {model.params.get(key)!r} then, {rebuilt['params'].get(key)!r} now")
    if model.lineage.get("git_dirty"):
        differences.append("the tree had uncommitted changes when the model was trained: they are not in "
                           "the commit")
    return Reproduction(model.ref, outcome, model.artifact_sha256, rebuilt["sha256"], code, tolerance,
                        int(rebuilt["holdout_rows"]), gap, _environment_differences(model), tuple(differences))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
