"""A writer killed with SIGKILL mid-write never leaves a partial object visible."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
