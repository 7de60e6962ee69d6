"""State shared through the artifact store: compare-and-set on create-only keys, raced by processes
on the local store and on a real S3 server (moto_server), and the prediction log's store side."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from race import BARRIER
from servers import moto_server

from loopml.backends.local_store import LocalArtifactStore
from loopml.predlog import PredictionLogWriter, read_store_segments, store_segments
from loopml.shared_state import KEEP, SharedState, StateConflictError

RACER = BARRIER + r"""
import sys, json
from loopml.shared_state import SharedState, StateConflictError
target, worker, rounds, parties, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if target.startswith("s3://"):
    from loopml_s3 import S3ArtifactStore, S3StoreOptions
    store = S3ArtifactStore(S3StoreOptions(uri=target, endpoint_url=sys.argv[6], region="us-east-1",
                                           access_key_id="AKIATEST", secret_access_key="x"))
else:
    from loopml.backends.local_store import LocalArtifactStore
    store = LocalArtifactStore(target)
state = SharedState(store, "race/counter")
won = lost = 0
for i in range(rounds):
    current = state.read()
    barrier(folder, f"read{i}", worker, parties)  # everyone has read the same version before anyone writes
    try:
        state.write(current.version, {"count": current.value.get("count", 0) + 1, "by": worker})
        won += 1
    except StateConflictError:
        lost += 1
    barrier(folder, f"wrote{i}", worker, parties)
print(json.dumps({"won": won, "lost": lost}))
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIATEST",
                     aws_secret_access_key="x").create_bucket(Bucket="state")
        yield endpoint


def race(target: str, barriers: Path, parties: int, rounds: int, *extra: str) -> list[dict[str, int]]:
    workers = [subprocess.Popen([sys.executable, "-c", RACER, target, f"w{i}", str(rounds), str(parties),
                                 str(barriers), *extra], stdout=subprocess.PIPE, text=True) for i in range(parties)]
    results = [json.loads(w.communicate(timeout=600)[0]) for w in workers]
    assert all(w.returncode == 0 for w in workers)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_processes_racing_on_one_version_exactly_one_wins_each_round(where, tmp_path, request) -> None:
    parties, rounds = 4, 8
    if where == "s3":
        endpoint = request.getfixturevalue("s3")
        target, extra = "s3://state/loopml", (endpoint,)
    else:
        target, extra = str(tmp_path / "store"), ()
    results = race(target, tmp_path / "barriers", parties, rounds, *extra)
    assert sum(r["won"] for r in results) == rounds  # one winner per round
    assert sum(r["lost"] for r in results) == rounds * (parties - 1)
    if where == "local":
        final = SharedState(LocalArtifactStore(tmp_path / "store"), "race/counter").read()
        assert final.version == rounds and final.value["count"] == rounds  # no lost update
        assert len(list(LocalArtifactStore(tmp_path / "store").list("state/race/counter/0"))) == KEEP  # pruned


def test_a_writer_that_read_long_ago_cannot_recreate_a_pruned_version(tmp_path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    state = SharedState(store, "monitoring/churn/log-cursor")
    assert state.read().version == 0
    stale = state.read()
    for i in range(KEEP + 3):
        state.write(i, {"n": i + 1})
    assert state.read().value == {"n": KEEP + 3}
    assert not store.exists("state/monitoring/churn/log-cursor/000000000001.json")  # pruned
    with pytest.raises(StateConflictError):
        state.write(stale.version, {"n": "stale"})  # version 1 again: below the floor
    assert state.read().value == {"n": KEEP + 3}
    with pytest.raises(StateConflictError):
        state.write(KEEP + 1, {"n": "also stale"})  # an existing version: create-only


class FlakySink:
    """The local store, refusing its first ``failures`` writes (a network blip to S3)."""

    def __init__(self, store: LocalArtifactStore, failures: int) -> None:
        self.store, self.failures = store, failures

    def put(self, key, data, metadata=None):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("S3 is unreachable")
        return self.store.put(key, data, metadata=metadata)


def test_segments_reach_the_store_on_age_without_traffic_and_a_failed_upload_is_retried(tmp_path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    writer = PredictionLogWriter(tmp_path / "log", "churn", sink=FlakySink(store, failures=1), threaded=False,
                                 segment_seconds=0.2)
    writer.write([{"ts": time.time(), "request_id": "r1", "version": 1, "inputs": {}, "output": 0.5}])
    writer.tick()  # written to disk, segment open
    assert store_segments(store, "churn") == []
    time.sleep(0.25)
    writer.tick()  # old enough: closed; the upload fails and is kept
    assert store_segments(store, "churn") == []
    writer.write([{"ts": time.time(), "request_id": "r2", "version": 1, "inputs": {}, "output": 0.7}])
    writer.tick()
    time.sleep(0.25)
    writer.tick()  # the next close uploads both
    keys = store_segments(store, "churn")
    assert len(keys) == 2
    assert [r["request_id"] for r in read_store_segments(store, keys)] == ["r1", "r2"]
    writer.close()


def test_the_segment_cursor_stays_small_and_knows_late_uploads() -> None:
    from loopml.segment_cursor import SegmentCursor

    def key(day: str, writer: str, part: int) -> str:
        return f"predictions/churn/{day}/10/{writer}-{part:04d}.jsonl"

    cursor = SegmentCursor()
    for part in (0, 1, 2, 4, 5):  # part 3's upload failed and comes later
        cursor.add(key("2026-11-28", "host-1-77", part))
    assert key("2026-11-28", "host-1-77", 2) in cursor and key("2026-11-28", "host-1-77", 3) not in cursor
    assert cursor.to_value()["writers"]["predictions/churn/host-1-77"] == {"upto": 2, "above": [4, 5],
                                                                            "day": "2026-11-28"}
    cursor.add(key("2026-11-29", "host-1-77", 3))  # the retried upload, an hour later
    assert cursor.to_value()["writers"]["predictions/churn/host-1-77"]["upto"] == 5
    cursor.add("predictions/churn/odd-name.jsonl")  # another shape: kept as it is
    back = SegmentCursor.from_value(json.loads(json.dumps(cursor.to_value())))
    assert "predictions/churn/odd-name.jsonl" in back and key("2026-11-28", "host-1-77", 5) in back
    assert key("2026-11-28", "host-2-88", 0) not in back  # another writer
    back.add(key("2026-11-20", "old-1-1", 0))
    back.forget_before("2026-11-22")
    assert set(back.to_value()["writers"]) == {"predictions/churn/host-1-77"}


class FlakyReads:
    """The store, whose next ``failures`` reads of a log segment fail as S3 does when unreachable."""

    def __init__(self, store, failures: int) -> None:
        self.store, self.failures = store, failures

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def get(self, key: str) -> bytes:
        if self.failures and key.startswith("predictions/"):
            self.failures -= 1
            raise ConnectionError("S3 read failed (injected)")
        return self.store.get(key)


def upload_rows(store, n: int, tmp_path: Path) -> set[str]:
    writer = PredictionLogWriter(tmp_path / "log", "churn", sink=store, threaded=False, segment_seconds=0.0)
    ids = set()
    for batch in range(4):  # four segments: each tick closes (and uploads) the one it wrote
        rows = [{"ts": time.time(), "request_id": f"r{batch}-{i}", "version": 1, "inputs": {"x": float(i)},
                 "output": 0.5} for i in range(n // 4)]
        writer.write(rows)
        writer.tick()
        ids |= {r["request_id"] for r in rows}
    writer.close()
    return ids


@pytest.mark.subprocess  # moto_server
@pytest.mark.parametrize("fails_at", ["read", "drift check", "report", "event"])
def test_a_monitor_run_that_fails_anywhere_leaves_its_rows_for_the_next(s3, tmp_path, fails_at: str) -> None:
    """Exactly once: rows count as read only when the run's last step succeeded. Before, the shared
    cursor moved before the segments were read, and the next monitor read 0 of 400 rows."""
    from types import SimpleNamespace

    from loopml.stages import monitoring
    from loopml_s3 import S3ArtifactStore, S3StoreOptions

    store = S3ArtifactStore(S3StoreOptions(uri=f"s3://state/exactly-once-{fails_at.replace(' ', '-')}",
                                           endpoint_url=s3, region="us-east-1", access_key_id="AKIATEST",
                                           secret_access_key="x"))
    sent = upload_rows(store, 400, tmp_path)
    flaky = SimpleNamespace(store=FlakyReads(store, failures=1 if fails_at == "read" else 0))
    claim = monitoring.StoreClaim(flaky, "churn")  # type: ignore[arg-type]
    with pytest.raises(ConnectionError if fails_at == "read" else RuntimeError):
        records = claim.take()
        assert {r["request_id"] for r in records} == sent  # read while claimed; then a later step fails
        try:
            raise RuntimeError(f"{fails_at} failed (injected)")
        except RuntimeError:
            claim.release()
            raise
    racing = monitoring.StoreClaim(SimpleNamespace(store=store), "churn")  # type: ignore[arg-type]
    assert {r["request_id"] for r in racing.take()} == sent  # the next run gets all 400
    other = monitoring.StoreClaim(SimpleNamespace(store=store), "churn")  # type: ignore[arg-type]
    assert other.take() == []  # while claimed, nobody else reads them
    racing.commit()
    assert monitoring.StoreClaim(SimpleNamespace(store=store), "churn").take() == []  # type: ignore[arg-type]


@pytest.mark.subprocess  # moto_server
def test_a_claim_whose_monitor_died_expires(s3, tmp_path, monkeypatch) -> None:
    from types import SimpleNamespace

    from loopml.stages import monitoring
    from loopml_s3 import S3ArtifactStore, S3StoreOptions

    store = S3ArtifactStore(S3StoreOptions(uri="s3://state/expiring-claim", endpoint_url=s3, region="us-east-1",
                                           access_key_id="AKIATEST", secret_access_key="x"))
    sent = upload_rows(store, 40, tmp_path)
    ws = SimpleNamespace(store=store)
    assert len(monitoring.StoreClaim(ws, "churn").take()) == 40  # type: ignore[arg-type]  # then killed -9
    assert monitoring.StoreClaim(ws, "churn").take() == []  # type: ignore[arg-type]  # the lease holds
    monkeypatch.setattr(monitoring, "CLAIM_SECONDS", 0.0)
    later = monitoring.StoreClaim(ws, "churn")  # type: ignore[arg-type]
    monkeypatch.setattr(monitoring.time, "time", lambda: time.monotonic() + 1e10)  # far past the lease
    assert {r["request_id"] for r in later.take()} == sent


@pytest.mark.parametrize("shared", [True, False], ids=["through the store", "on local disk"])
def test_a_monitor_window_is_consumed_only_when_the_run_succeeds(tmp_path, shared: bool) -> None:
    """The window the monitor flow reads (``claimed_window``): a run that fails after reading leaves
    every row for the next run, which consumes them; the one after that finds none."""
    from loopml.context import Workspace
    from loopml.examples import churn
    from loopml.stages.monitoring import claimed_window

    config = churn.init_project(tmp_path / "p", n_customers=100, seed=1)
    if shared:
        config.write_text(config.read_text() + '\n[serving]\nbackend = "builtin"\n[serving.options]\n'
                          'log_to_store = true\n')
    ws = Workspace.open(config)
    writer = PredictionLogWriter(Path(ws.serving.prediction_log_dir), "churn", sink=ws.store if shared else None,
                                 threaded=False, segment_seconds=0.0)
    rows = [{"ts": time.time(), "request_id": f"r{i}", "version": 1, "inputs": {"x": float(i)}, "output": 0.5}
            for i in range(50)]
    writer.write(rows)
    writer.tick()
    writer.close()
    with pytest.raises(RuntimeError, match="report"), claimed_window(ws, "churn") as window:
        assert len(window.records) == 50
        raise RuntimeError("saving the report failed (injected)")
    with claimed_window(ws, "churn") as window:
        assert len(window.records) == 50
    with claimed_window(ws, "churn") as window:
        assert window.records == ()
