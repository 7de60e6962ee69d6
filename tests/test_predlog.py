"""The prediction log: hourly segments per writer, reads by offset, torn lines, upload to the store."""

from __future__ import annotations

import json
from pathlib import Path

from loopml.backends.local_store import LocalArtifactStore
from loopml.predlog import LogCursor, PredictionLogWriter, read_since, segments


def record(i: int, ts: float = 1_800_000_000.0) -> dict:
    return {"ts": ts + i, "request_id": f"r{i}", "version": 1, "inputs": {"x": i}, "output": 0.5, "latency_ms": 1.0}


def test_a_monitor_reads_only_new_rows_by_offset(tmp_path: Path) -> None:
    writer = PredictionLogWriter(tmp_path, "churn", threaded=False)
    writer.write([record(0), record(1)])
    writer.flush()
    first, cursor = read_since(tmp_path, "churn")
    writer.write([record(2)])
    writer.flush()
    second, cursor = read_since(tmp_path, "churn", cursor)
    again, _ = read_since(tmp_path, "churn", LogCursor.from_json(cursor.to_json()))
    writer.close()
    assert [r["request_id"] for r in first] == ["r0", "r1"]
    assert [r["request_id"] for r in second] == ["r2"] and again == []


def test_a_torn_last_line_is_left_for_later_and_a_corrupt_line_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "churn" / "2027-01-15" / "08"
    folder.mkdir(parents=True)
    segment = folder / "host-1-2-0000.jsonl"
    segment.write_text(json.dumps(record(0)) + "\nnot json\n" + json.dumps(record(1))[:20])
    rows, cursor = read_since(tmp_path, "churn")
    assert [r["request_id"] for r in rows] == ["r0"]
    with open(segment, "a") as out:  # the writer finishes its line
        out.write(json.dumps(record(1))[20:] + "\n")
    rows, _ = read_since(tmp_path, "churn", cursor)
    assert [r["request_id"] for r in rows] == ["r1"]


def test_segments_rotate_by_size_and_upload_to_the_store_when_closed(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    writer = PredictionLogWriter(tmp_path / "log", "churn", threaded=False, max_segment_bytes=300, sink=store)
    for i in range(6):
        writer.write([record(i)])
        writer.flush()
    writer.close()
    local = list(segments(tmp_path / "log", "churn"))
    assert len(local) >= 2  # rotated once a segment passed 300 bytes
    uploaded = sorted(o.key for o in store.list("predictions/churn/"))
    assert len(uploaded) == len(local)
    rows, _ = read_since(tmp_path / "log", "churn")
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(6)]


def test_the_threaded_writer_flushes_on_demand(tmp_path: Path) -> None:
    writer = PredictionLogWriter(tmp_path, "churn", flush_seconds=30)
    writer.write([record(0)])
    writer.flush()
    assert [r["request_id"] for r in read_since(tmp_path, "churn")[0]] == ["r0"]
    writer.close()


def test_log_lines_read_back_the_same_whichever_encoder_wrote_them() -> None:
    """orjson writes the lines when installed; a record the standard encoder writes differently
    (a NaN output from a broken model) goes through the standard one, so readers see one format."""
    import json
    import math

    from loopml import prediction_records

    rows = [{"tenure_months": 12, "monthly_charges": 70.5, "contract": "month", "region": "n\u00e9\"x"}] * 2
    normal = prediction_records.answered(ts=1.5, version=2, request_id="r-1", features=list(rows[0]), rows=rows,
                                         answer={"predictions": [0.25, 0.75]}, latency_ms=0.1, entity="id")
    broken = prediction_records.answered(ts=2.5, version=3, request_id=None, features=list(rows[0]), rows=rows[:1],
                                         answer={"predictions": [float("nan")]}, latency_ms=0.1)
    multi = prediction_records.answered(ts=3.5, version=4, request_id="r-3", features=list(rows[0]), rows=rows[:1],
                                        answer={"predictions": ["b"], "probabilities": [[0.2, float("inf")]],
                                                "classes": ["a", "b"]}, latency_ms=0.1)
    records = [*normal, *broken, *multi]
    data = prediction_records.encode(records)
    assert prediction_records._fast_dumps() is not None  # the loop extra brings orjson (via Prefect)
    expected = "".join(prediction_records._LINE(r) + "\n" for r in records).encode()
    same = prediction_records._LINE  # compare what readers get (orjson writes UTF-8 where json writes \u escapes)
    assert [same(json.loads(a)) for a in data.splitlines()] == [same(json.loads(b)) for b in expected.splitlines()]
    assert b"NaN" in data and b"Infinity" in data  # the non-finite outputs kept their values
    back = [prediction_records.parse(json.loads(line)) for line in data.decode().splitlines()]
    assert all(r is not None for r in back) and math.isnan(back[2]["output"])


def test_a_prediction_answer_renders_as_the_standard_response_would() -> None:
    import json

    from starlette.responses import JSONResponse

    from loopml import prediction_records

    for body in ({"model": "churn", "version": 3, "predictions": [0.25, 1e-7]},
                 {"model": "plan", "version": 1, "predictions": ["gold"], "probabilities": [[0.1, 0.9]],
                  "classes": ["basic", "gold"]}):
        assert json.loads(prediction_records.answer_json(body)) == json.loads(JSONResponse(body).body)
    assert prediction_records.answer_json({"version": 1, "predictions": [float("nan")]}) is None  # standard path
