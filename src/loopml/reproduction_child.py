"""The rebuilding half of ``loopml reproduce``, run as ``python -m loopml.reproduction_child SPEC``.

It runs in a process of its own, in the project folder at the recorded commit (a git worktree), so
a team's network factory is imported from the code the model was trained with, never from a module
this process already imported. It opens that project's configuration with loopml's state moved to a
temporary folder (local store, SQLite registry, local feature store, the local tracker only: nothing
is written to the team's store, registry or trackers), copies the recorded dataset versions in from
the original store, joins the features and trains exactly as the pipeline does. It writes the
rebuilt artifact and the holdout rows beside the spec and prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from loopml.context import Workspace
from loopml.scratch import copy_dataset_version, scratch_workspace
from loopml.stages.data import apply_features, frames
from loopml.stages.training import train


def rebuild(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    work = Path(spec["work"])
    if spec.get("torch_threads"):
        torch.set_num_threads(int(spec["torch_threads"]))
    original = Workspace.open(spec["original_config"], profile=spec["profile"])
    rebuilt = scratch_workspace(spec["config"], spec["profile"], work)
    labels = copy_dataset_version(original, rebuilt, spec["datasets"]["labels"])
    features = copy_dataset_version(original, rebuilt, spec["datasets"]["features"])
    apply_features(rebuilt, features)
    train_rows, holdout = frames(rebuilt, labels)
    candidate = train(rebuilt, labels, features, train_rows)
    (work / "rebuilt.pt2").write_bytes(rebuilt.store.get(candidate.artifact_key))
    holdout.to_parquet(work / "holdout.parquet", index=False)
    return {"sha256": candidate.artifact_sha256, "fingerprint": candidate.fingerprint,
            "params": candidate.params, "holdout_rows": len(holdout), "train_rows": len(train_rows)}


if __name__ == "__main__":
    result = rebuild(json.loads(Path(sys.argv[1]).read_text()))
    print(json.dumps(result, default=str))
