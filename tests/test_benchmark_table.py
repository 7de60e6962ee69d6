"""The README's benchmark table is what benchmarks/results say, generated, never typed by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def table_module():
    spec = importlib.util.spec_from_file_location("benchmark_table", ROOT / "benchmarks" / "table.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_generated_from_the_result_files() -> None:
    assert table_module().main(["--check"]) == 0, "run .venv/bin/python benchmarks/table.py"


def test_every_result_file_has_a_place_in_the_table() -> None:
    module = table_module()
    results = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    assert results == set(module.FORMATS)


def test_a_changed_result_changes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = table_module()
    copy = tmp_path / "results"
    copy.mkdir()
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        (copy / path.name).write_text(path.read_text())
    before = module.table()
    tracking = json.loads((copy / "tracking.json").read_text())
    tracking["points_per_second"]["loopml log_metrics"] = 123456
    (copy / "tracking.json").write_text(json.dumps(tracking))
    monkeypatch.setattr(module, "RESULTS", copy)
    after = module.table()
    assert after != before and "123,456 points/s" in after
