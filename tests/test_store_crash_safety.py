"""A writer killed with SIGKILL mid-write never leaves a partial object visible."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopml.backends.local_store import LocalArtifactStore

WRITER = r"""
import sys, time
from loopml.backends.local_store import LocalArtifactStore

class SlowChunks:
    # A file-like object that yields 64 MiB slowly, so the kill lands mid-write.
    def __init__(self):
        self.left = 64
    def read(self, n):
        if self.left == 0:
            return b""
        self.left -= 1
        time.sleep(0.01)
        return bytes([self.left % 251]) * (1 << 20)

store = LocalArtifactStore(sys.argv[1])
print("ready", flush=True)
store.put(sys.argv[2], SlowChunks())
print("done", flush=True)
"""


def _expected() -> bytes:
    return b"".join(bytes([i % 251]) * (1 << 20) for i in range(63, -1, -1))


@pytest.mark.subprocess
def test_sigkill_during_put_leaves_nothing_or_the_whole_object(tmp_path: Path) -> None:
    root = tmp_path / "store"
    expected_sha = hashlib.sha256(_expected()).hexdigest()
    outcomes = []
    for i, delay in enumerate([0.05, 0.2, 0.4, 0.6, None]):  # None: let the last writer finish
        key = f"crash/object-{i}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), key],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        if delay is None:
            proc.wait(timeout=120)
        else:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.01)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        store = LocalArtifactStore(root)
        if store.exists(key):
            assert hashlib.sha256(store.get(key)).hexdigest() == expected_sha
            outcomes.append("complete")
        else:
            assert [o.key for o in store.list("crash/") if o.key == key] == []
            outcomes.append("absent")
    # Early kills leave nothing; the unkilled run stores everything.
    assert outcomes[0] == "absent"
    assert outcomes[-1] == "complete"
    # Leftover temp files are invisible to readers and swept by gc().
    store = LocalArtifactStore(root)
    assert all(not o.key.startswith(".") for o in store.list())
    store.gc()
    assert list((root / "tmp").iterdir()) == []
    assert [o.key for o in store.list()] == ["crash/object-4"]


DIE_BEFORE_REF = r"""
import os, signal, sys
from loopml.backends.local_store import LocalArtifactStore

def die(*args, **kwargs):  # the blob is renamed into place; the ref link is next
    os.kill(os.getpid(), signal.SIGKILL)

os.link = die
LocalArtifactStore(sys.argv[1]).put(sys.argv[2], sys.argv[3].encode())
"""


@pytest.mark.subprocess
def test_a_kill_between_blob_rename_and_ref_link_leaves_no_key_and_gc_or_a_re_put_cleans_up(
        tmp_path: Path) -> None:
    root = tmp_path / "store"
    for key in ("models/a.bin", "models/b.bin"):
        proc = subprocess.run([sys.executable, "-c", DIE_BEFORE_REF, str(root), key, f"bytes of {key}"])
        assert proc.returncode == -signal.SIGKILL
    store = LocalArtifactStore(root)
    orphans = list((root / "objects").glob("*/*"))
    assert len(orphans) == 2  # both blobs made it into place, neither key did
    assert list(store.list()) == [] and not store.exists("models/a.bin")
    assert store.put("models/a.bin", b"bytes of models/a.bin").key == "models/a.bin"  # a retry just works
    result = store.gc()
    assert (result.blobs, result.temp_files) == (1, 2)  # b's orphan blob, both dead writers' ref temps
    assert store.get("models/a.bin") == b"bytes of models/a.bin"
    assert list((root / "tmp").iterdir()) == []


WRITER_LOOP = r"""
import json, sys
from loopml.backends.local_store import LocalArtifactStore
store = LocalArtifactStore(sys.argv[1])
me, n, gc_state = sys.argv[2], int(sys.argv[3]), sys.argv[4]
def state():
    try:
        return open(gc_state).read()
    except OSError:
        return ""
failures, overlapped = [], 0
def put(key, data):
    global overlapped
    before = state()
    try:
        store.put(key, data)
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
    # gc said "pass k running" before and after this put: the put ran inside that pass.
    overlapped += before.endswith(" running") and state() == before
for i in range(n):
    put(f"race/{me}/{i}", f"shared content {i % 7}".encode() if i % 2 else f"{me} own {i}".encode() * 2000)
extra = 0
while not overlapped and extra < 20000:  # keep writing (elsewhere) until a put provably overlapped gc
    put(f"race-extra/{me}/{extra}", f"{me} extra {extra}".encode() * 100)
    extra += 1
print(json.dumps({"failures": failures, "puts_inside_a_gc_pass": overlapped}))
"""

GC_LOOP = r"""
import os, sys
from loopml.backends.local_store import LocalArtifactStore
store = LocalArtifactStore(sys.argv[1])
def say(text):
    with open(sys.argv[3] + ".tmp", "w") as f:
        f.write(text)
    os.replace(sys.argv[3] + ".tmp", sys.argv[3])
runs = 0
while not os.path.exists(sys.argv[2]) or runs == 0:
    say(f"{runs + 1} running")
    store.gc()
    runs += 1
    say(f"{runs} done")
print(runs)
"""


@pytest.mark.subprocess
def test_gc_running_beside_writers_loses_no_put_and_no_blob(tmp_path: Path) -> None:
    root, stop, counter = tmp_path / "store", tmp_path / "writers-done", tmp_path / "gc-state"
    store = LocalArtifactStore(root)
    store.put("race/old", b"garbage soon")
    store.delete("race/old")  # an unreferenced blob for gc to find
    gc = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(root), str(stop), str(counter)],
                          stdout=subprocess.PIPE, text=True)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER_LOOP, str(root), f"w{i}", "75", str(counter)],
                                stdout=subprocess.PIPE, text=True) for i in range(4)]
    results = [json.loads(w.communicate(timeout=300)[0]) for w in writers]
    stop.touch()
    gc_runs = int(gc.communicate(timeout=120)[0])
    assert [r["failures"] for r in results] == [[], [], [], []]
    # Each writer made at least one put that began and ended inside one gc pass: they did overlap.
    assert all(r["puts_inside_a_gc_pass"] >= 1 for r in results) and gc_runs >= 1
    keys = [o.key for o in store.list("race/")]
    assert len(keys) == 300
    for key in keys:  # every listed key is readable: gc never took a blob a key needs
        store.get(key)
    assert list((root / "tmp").iterdir()) == []
    assert store.gc().blobs == 0  # nothing unreferenced is left either
