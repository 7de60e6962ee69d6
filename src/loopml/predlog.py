"""The prediction log: what servers answered, partitioned by hour, written off the request path.

Layout under a log folder: ``<model>/<YYYY-MM-DD>/<HH>/<writer>.jsonl`` where ``writer`` is
``<host>-<pid>-<start>``, so replicas and restarts never share a file. A segment is closed when the
hour turns, when it reaches ``max_segment_bytes``, or ``segment_seconds`` after it opened (even with
no traffic since); with a ``sink`` (the artifact store), closed segments are uploaded under
``predictions/<model>/…`` (an upload that fails is retried at the next close) so monitors on other
machines read them with :func:`store_segments` / :func:`read_store_segments`.

Each line is a :class:`~loopml.prediction_records.PredictionRecord`.
Readers (:func:`read_since`) keep a cursor of byte offsets per
segment, so a monitor run reads only new rows, and stop at the last complete line, so a torn last
line (a writer killed mid-write) is skipped now and read once it is complete, never half-parsed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loopml import prediction_records

log = logging.getLogger(__name__)


def segment_dir(root: Path, model: str, ts: float) -> Path:
    stamp = datetime.fromtimestamp(ts, UTC)
    return root / model / stamp.strftime("%Y-%m-%d") / stamp.strftime("%H")


def writer_id() -> str:
    """This process's name in segment file names: ``<host>-<pid>-<start ms>``, so replicas, TorchServe
    workers and restarts never share a file."""
    return f"{socket.gethostname()}-{os.getpid()}-{int(_STARTED * 1000)}"


_STARTED = time.time()


def append_segment(root: Path, model: str, data: bytes, ts: float | None = None) -> Path:
    """Append complete lines to this process's segment of the hour, in one write (for writers that
    log synchronously: the TorchServe handler in each worker, loopml's router in front of it)."""
    folder = segment_dir(Path(root), model, time.time() if ts is None else ts)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{writer_id()}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


class PredictionLogWriter:
    """Buffers records in memory and writes them every ``flush_seconds``: from a background thread,
    or (``threaded=False``) from the server's event loop via :meth:`tick`, which costs the loop a
    millisecond or two a few times a second and avoids GIL hand-offs between threads entirely.

    ``write`` encodes the records (orjson: well under a microsecond a row) and appends the bytes: no
    lock, no thread wake-up on the request path, and nothing the garbage collector has to walk. The
    writer swaps the buffer and appends it to the segment in one go, so the serving thread and the
    writer compete for the GIL a few times a second, not once per request. Past ``max_buffered`` records (disk far
    slower than traffic) new records are dropped and counted (``dropped``) rather than slowing answers.
    """

    def __init__(self, root: Path, model: str, *, max_segment_bytes: int = 64 << 20, max_buffered: int = 200_000,
                 sink: Any = None, flush_seconds: float = 0.25, threaded: bool = True,
                 segment_seconds: float = 3600.0) -> None:
        self.root = Path(root)
        self.model = model
        self.max_segment_bytes = max_segment_bytes
        self.max_buffered = max_buffered
        self.sink = sink
        self.flush_seconds = flush_seconds
        self.segment_seconds = segment_seconds
        self._opened_at = 0.0
        self._unsent: list[tuple[str, Path]] = []  # closed segments whose upload failed
        self.writer_id = f"{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1000)}"
        self.dropped = 0
        self.written = 0
        self._buffer: list[bytes] = []  # encoded lines, one chunk per write
        self._buffered = 0
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._generation = 0
        self._closing = False
        self._file: Any = None
        self._path: Path | None = None
        self._hour: str | None = None
        self._part = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if sink is not None:
            self._adopt_orphans()
        if threaded:
            self._thread = threading.Thread(target=self._run, name=f"loopml-predlog-{model}", daemon=True)
            self._thread.start()

    def write(self, records: list[Mapping[str, Any]]) -> None:
        """Queue ``records``, encoded now: bytes are not tracked by the garbage collector, while a
        quarter second of records kept as dicts (each holding its request's row) survived the young
        collections and made every older one walk them."""
        if self._buffered >= self.max_buffered:
            self.dropped += len(records)
            return
        self._buffer.append(prediction_records.encode(records))
        self._buffered += len(records)  # a threshold, not a count: the exact count is taken at drain

    def tick(self) -> None:
        """Write what is buffered now (the server calls this from its event loop, unthreaded mode)."""
        self._drain()
        self._roll_if_due()

    def _roll_if_due(self) -> None:
        """Close a segment older than ``segment_seconds``, so it reaches the store without traffic."""
        if self._file is not None and time.time() - self._opened_at >= self.segment_seconds:
            with self._lock:
                if self._file is not None and time.time() - self._opened_at >= self.segment_seconds:
                    self._close_segment()

    def flush(self, timeout: float = 10.0) -> None:
        """Return once everything written so far is on disk (monitors in the same process, tests)."""
        if self._thread is None:
            self._drain()
            return
        with self._flushed:
            target = self._generation + 1
            self._wake.set()
            self._flushed.wait_for(lambda: self._generation >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered, close (and upload) the open segment."""
        self._closing = True
        if self._thread is None:
            self._drain()
            with self._lock:
                self._close_segment()
            return
        self._wake.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------ the writer thread
    def _segment(self, ts: float) -> Any:
        stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H")
        if self._file is not None and (stamp != self._hour or self._file.tell() >= self.max_segment_bytes
                                       or ts - self._opened_at >= self.segment_seconds):
            self._close_segment()
        if self._file is None:
            folder = segment_dir(self.root, self.model, ts)
            folder.mkdir(parents=True, exist_ok=True)
            self._path = folder / f"{self.writer_id}-{self._part:04d}.jsonl"
            self._part += 1
            self._file = open(self._path, "ab")  # noqa: SIM115 - closed in _close_segment
            self._hour = stamp
            self._opened_at = ts
        return self._file

    def _close_segment(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self.sink is not None and self._path is not None:
            self._unsent.append(("predictions/" + self._path.relative_to(self.root).as_posix(), self._path))
            self._upload()

    def _upload(self) -> None:
        still: list[tuple[str, Path]] = []
        for key, path in self._unsent:
            try:
                self.sink.put(key, path, metadata={"content-type": "application/x-ndjson"})
            except Exception as exc:  # the segment stays on local disk, and is tried again
                log.warning("could not upload prediction log segment %s (retried at the next close): %s", key, exc)
                still.append((key, path))
                continue
            self._mark_uploaded(path)
        self._unsent = still

    # A segment is uploaded when it closes; one still open when its process died (kill -9, OOM) is
    # an orphan. Each writer lists what it uploaded next to its segments, so the next writer on this
    # machine and folder (a restart; on Kubernetes, the container restarted in the same pod with the
    # same emptyDir) uploads what a dead writer left, once.
    def _uploaded_list(self, writer_id: str) -> Path:
        return self.root / self.model / ".uploaded" / f"{writer_id}.txt"

    def _mark_uploaded(self, path: Path) -> None:
        writer_id = _writer_of(path)
        listing = self._uploaded_list(writer_id)
        try:
            listing.parent.mkdir(parents=True, exist_ok=True)
            with listing.open("a") as out:
                out.write(path.name + "\n")
        except OSError as exc:  # worst case the segment is uploaded again later: same key, same bytes
            log.warning("could not record the upload of %s: %s", path.name, exc)

    def _adopt_orphans(self) -> None:
        folder = self.root / self.model
        if not folder.is_dir():
            return
        by_writer: dict[str, list[Path]] = {}
        for path in folder.glob("*/*/*.jsonl"):
            writer_id = _writer_of(path)
            if writer_id != self.writer_id:
                by_writer.setdefault(writer_id, []).append(path)
        for writer_id, paths in by_writer.items():
            if writer_alive(writer_id):
                continue
            listing = self._uploaded_list(writer_id)
            done = set(listing.read_text().split()) if listing.is_file() else set()
            orphans = sorted(p for p in paths if p.name not in done)
            for path in orphans:
                self._unsent.append(("predictions/" + path.relative_to(self.root).as_posix(), path))
            if orphans:
                log.warning("uploading %d prediction log segment(s) left by %s, which is no longer running",
                            len(orphans), writer_id)
        if self._unsent:
            self._upload()

    def _drain(self) -> None:
        with self._lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        chunks, self._buffer = self._buffer, []  # one swap; the serving thread appends to the new list
        self._buffered = 0
        if chunks:
            data = b"".join(chunks)
            lines = data.count(b"\n")  # one line per record (JSON escapes newlines inside strings)
            try:
                out = self._segment(time.time())
                out.write(data)
                out.flush()
                self.written += lines
            except OSError as exc:
                self.dropped += lines
                log.warning("prediction log write failed (%d rows dropped): %s", lines, exc)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self._drain()
            self._roll_if_due()
            with self._flushed:
                self._generation += 1
                self._flushed.notify_all()
            if self._closing:
                with self._lock:
                    self._drain_locked()
                    self._close_segment()
                return


def _writer_of(segment: Path) -> str:
    """The writer id of a segment file ``<writer>-<part>.jsonl``."""
    return segment.name.rsplit("-", 1)[0]


def writer_alive(writer_id: str) -> bool:
    """Whether the log writer ``<host>-<pid>-<start ms>`` may still be running. A writer of another
    machine is presumed alive (not ours to judge); on this one, its pid must be running a process
    that started before the writer did (a pid is reused, and a container's process has the same pid
    after every restart)."""
    host, _, rest = writer_id.rpartition("-")
    host, _, pid_text = host.rpartition("-")
    if not (pid_text.isdigit() and rest.isdigit()) or host != socket.gethostname():
        return True
    pid, started = int(pid_text), int(rest) / 1000
    if pid == os.getpid():
        return False  # this process is its successor
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as machine:
            boot = next(int(line.split()[1]) for line in machine if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    return boot + ticks / os.sysconf("SC_CLK_TCK") <= started + 1


# ---------------------------------------------------------------------------- reading
@dataclass
class LogCursor:
    """Byte offsets already read, per segment path (relative to the log root)."""

    offsets: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.offsets, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LogCursor:
        return cls(dict(json.loads(text)))


def segments(root: Path, model: str) -> Iterator[Path]:
    folder = Path(root) / model
    if folder.is_dir():
        yield from sorted(folder.glob("*/*/*.jsonl"))
    legacy = Path(root) / f"{model}.jsonl"  # written by loopml 0.1 (read, never written any more)
    if legacy.is_file():
        yield legacy


def read_since(root: Path, model: str, cursor: LogCursor | None = None,
               since: float = 0.0) -> tuple[list[dict[str, Any]], LogCursor]:
    """New complete records (``ts >= since``) after ``cursor``; returns them and the moved cursor.

    A line that does not end in a newline is not consumed (a writer may still be writing it); a
    complete line that is not JSON is skipped with a warning, never fails the read.
    """
    cursor = LogCursor(dict(cursor.offsets)) if cursor else LogCursor()
    out: list[dict[str, Any]] = []
    root = Path(root)
    for path in segments(root, model):
        rel = path.relative_to(root).as_posix()
        start = cursor.offsets.get(rel, 0)
        with open(path, "rb") as src:
            src.seek(start)
            data = src.read()
        end = data.rfind(b"\n") + 1
        if end <= 0:
            continue
        out.extend(_records(data[:end], rel, since))
        cursor.offsets[rel] = start + end
    out.sort(key=lambda r: r.get("ts", 0))
    return out, cursor


def _records(data: bytes, where: str, since: float) -> Iterator[dict[str, Any]]:
    """The records (``ts >= since``) in complete JSON lines; a corrupt line is skipped with a warning."""
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("skipping a corrupt line in prediction log %s", where)
            continue
        if isinstance(record, dict) and record.get("ts", 0) >= since:
            yield record


# ---------------------------------------------------------------------------- reading from the store
def store_segments(store: Any, model: str) -> list[str]:
    """Keys of the closed segments of ``model`` uploaded to ``store``, oldest hour first."""
    prefix = f"predictions/{model}/"
    return sorted(info.key for info in store.list(prefix) if info.key.endswith(".jsonl"))


def read_store_segments(store: Any, keys: list[str], since: float = 0.0) -> list[dict[str, Any]]:
    """The records (``ts >= since``) of uploaded segments, by time; corrupt lines skipped with a warning."""
    out: list[dict[str, Any]] = []
    for key in keys:
        out.extend(_records(store.get(key), key, since))
    out.sort(key=lambda r: r.get("ts", 0))
    return out
