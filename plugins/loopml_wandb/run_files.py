"""W&B's offline run files, read with W&B's own protobuf schema (W&B has no public reader for them),
and the folders of one run (the run, then each time it was resumed) read back as one run."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from loopml.records import MetricPoint

_HEADER = struct.Struct("<4sHB")
_RECORD = struct.Struct("<IHB")
_BLOCK = 32 * 1024


def read_run_file(path: Path) -> dict[str, Any]:
    """Decode a ``.wandb`` file with W&B's own protobuf schema: config, history, tags, exit code.

    The file is W&B's LevelDB-style log: a 7-byte header, then 32 KiB blocks of records
    (crc32, length, type FULL/FIRST/MIDDLE/LAST), each a serialized ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, _magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, offset = [], b"", _HEADER.size
    while offset + _RECORD.size <= len(data):
        left = _BLOCK - offset % _BLOCK
        if left < _RECORD.size:
            offset += left
            continue
        _crc, length, kind = _RECORD.unpack_from(data, offset)
        offset += _RECORD.size
        chunk = data[offset:offset + length]
        offset += length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
        elif kind == 0 and length == 0:
            break
    out: dict[str, Any] = {"config": {}, "history": {}, "tags": [], "exit_code": None, "name": "",
                           "start": 0.0, "artifacts": []}
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["name"] = rec.run.display_name
            out["run_id"] = rec.run.run_id
            out["tags"] = list(rec.run.tags)
            out["start"] = rec.run.start_time.seconds + rec.run.start_time.nanos / 1e9
            _apply_config(out["config"], rec.run.config)
        elif kind == "config":
            _apply_config(out["config"], rec.config)
        elif kind == "history":
            items = {(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            step = int(items.get("_step", rec.history.step.num))
            for key, value in items.items():
                if not key.startswith("_"):
                    out["history"].setdefault(key, []).append(MetricPoint(float(value), step,
                                                                          float(items.get("_timestamp", 0))))
        elif kind == "artifact":
            out["artifacts"] += [m.path for m in rec.artifact.manifest.contents]
            out.setdefault("artifact_records", []).append(
                {"name": rec.artifact.name, "type": rec.artifact.type, "aliases": list(rec.artifact.aliases),
                 "digest": rec.artifact.digest, "files": [m.path for m in rec.artifact.manifest.contents]})
        elif kind == "summary":
            for item in rec.summary.update:
                out.setdefault("summary", {})[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def _apply_config(config: dict[str, Any], record: Any) -> None:
    for item in record.update:
        config[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    for item in record.remove:
        config.pop(item.key or ".".join(item.nested_key), None)


def segment_order(folder: str, run_id: str) -> tuple[str, int]:
    """Order of a run's folders: ``offline-run-<time>-<id>`` and, resumed in the same second,
    ``…-<id>-<n>``."""
    head, _, suffix = folder.rpartition(f"-{run_id}")
    return head, int(suffix[1:]) if suffix[1:].isdigit() else 0


def merged(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """One run from the files of its segments (oldest first): name and start of the first, config
    and summary updated in order, history, tags and artifacts of all, the exit of the last."""
    out = dict(segments[0], config={}, history={}, tags=[], artifacts=[], artifact_records=[], summary={})
    for part in segments:
        out["config"].update(part["config"])
        out["summary"].update(part.get("summary", {}))
        for key, points in part["history"].items():
            out["history"].setdefault(key, []).extend(points)
        out["tags"] += [t for t in part["tags"] if t not in out["tags"]]
        out["artifacts"] += part["artifacts"]
        out["artifact_records"] += part.get("artifact_records", [])
        out["exit_code"] = part["exit_code"]
    return out
