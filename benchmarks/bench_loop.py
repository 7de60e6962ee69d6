"""An unchanged `loopml run` against Prefect's own start: what the loop adds when nothing changed.

    .venv/bin/python benchmarks/bench_loop.py        # writes benchmarks/results/loop.json

A `loopml init` project is run once (training, registering). Then, as processes, median of 3,
interleaved: `loopml run` again with nothing changed (data hashed and found unchanged, the feature
view applied, the candidate's fingerprint found registered, training and validation skipped; with
the built-in backend no in-process server is started, which would stop with the command), and the
peer, an empty
Prefect flow run by `python -c` in the same temporary-server setup (`PREFECT_HOME` of its own, no
`PREFECT_API_URL`), the floor any Prefect-based loop pays before its first step.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPEATS = 3
BIN = Path(sys.executable).parent
EMPTY_FLOW = "from prefect import flow\n\n@flow\ndef empty():\n    return None\n\nempty()\n"


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> dict:
    folder = Path(tempfile.mkdtemp(prefix="loopml-bench-loop-"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "WANDB_MODE": "offline",
            "PREFECT_HOME": str(folder / "prefect")}
    root = folder / "project"
    subprocess.run([str(BIN / "loopml"), "init", str(root)], check=True, env=env, capture_output=True)
    first = timed([str(BIN / "loopml"), "run"], root, env)
    runs: dict[str, list[float]] = {"loopml run, unchanged": [], "empty Prefect flow": []}
    for i in range(REPEATS):
        for name in runs if i % 2 == 0 else reversed(list(runs)):
            argv = [str(BIN / "loopml"), "run"] if name.startswith("loopml") else [sys.executable, "-c", EMPTY_FLOW]
            runs[name].append(timed(argv, root, env))
            print(i, name, round(runs[name][-1], 2), flush=True)
    summary = {name: statistics.median(values) for name, values in runs.items()}
    result = {"benchmark": "loop", "first_run_s": first, "seconds": summary, "runs": runs, "repeats": REPEATS,
              "added_s": summary["loopml run, unchanged"] - summary["empty Prefect flow"],
              "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    (Path(__file__).parent / "results" / "loop.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
