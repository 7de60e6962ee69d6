"""Streamed ingest: CSVs are read block by block into the declared types; the version (and its id)
is the same whichever path read the rows, however the rows are split into files and blocks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopml import canonical, dataset_checks
from loopml.backends.local_store import LocalArtifactStore
from loopml.dataset_rules import ColumnRule
from loopml.datasets import DatasetCatalog
from loopml.errors import DataValidationError

RULES = (ColumnRule("id", "int", nullable=False), ColumnRule("ts", "timestamp", nullable=False),
         ColumnRule("amount", "float", min=0), ColumnRule("count", "int"), ColumnRule("ok", "bool"),
         ColumnRule("plan", "category", allowed=("basic", "plus", "pro")), ColumnRule("note", "string"))
ROWS = 5000


def frame(rows: int = ROWS, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    amount = rng.gamma(2, 30, rows)
    amount[rng.random(rows) < 0.05] = np.nan
    counts = pd.array(rng.poisson(3, rows), dtype="Int64")
    counts[rng.random(rows) < 0.05] = pd.NA
    return pd.DataFrame({
        "id": np.arange(start, start + rows),
        "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(rows) * 7, unit="s"),
        "amount": amount, "count": counts, "ok": rng.random(rows) < 0.5,
        "plan": rng.choice(["basic", "plus", "pro"], rows),
        "note": rng.choice(["", "a, quoted \"one\"", "two\nlines", "ü"], rows),
    })


@pytest.fixture
def small_blocks(monkeypatch) -> None:
    """Many blocks and row groups from a few thousand rows."""
    monkeypatch.setattr(canonical, "BLOCK", 16 << 10)
    monkeypatch.setattr(canonical, "ROW_GROUP", 1000)


def reference_only(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise canonical.NotFastPath("forced")
        yield

    monkeypatch.setattr(canonical, "csv_batches", refuse)


def test_the_fast_path_streams_a_clean_csv_and_matches_the_reference_path(tmp_path, small_blocks, monkeypatch) -> None:
    source = tmp_path / "orders.csv"
    frame().to_csv(source, index=False)
    calls = []
    real = dataset_checks.read_file
    monkeypatch.setattr(dataset_checks, "read_file", lambda path: calls.append(path) or real(path))
    fast, _ = DatasetCatalog(LocalArtifactStore(tmp_path / "a")).ingest("orders", source, columns=RULES)
    assert calls == []  # never read whole by pandas
    reference_only(monkeypatch)
    slow, _ = DatasetCatalog(LocalArtifactStore(tmp_path / "b")).ingest("orders", source, columns=RULES)
    assert calls == [source]
    assert fast.id == slow.id and fast.row_count == ROWS
    assert fast.profile == slow.profile
    loaded = DatasetCatalog(LocalArtifactStore(tmp_path / "a")).load(fast)
    assert loaded["note"].isna().sum() == (frame()["note"] == "").sum()  # empty text is missing, as in pandas
    assert loaded["note"].str.contains("\n").any()  # a quoted newline stays inside its value


def test_the_same_rows_split_over_files_and_blocks_make_the_same_version(tmp_path, small_blocks) -> None:
    whole = tmp_path / "whole"
    whole.mkdir()
    frame().to_csv(whole / "all.csv", index=False)
    parts = tmp_path / "parts"
    parts.mkdir()
    rows = frame()
    for i, (a, b) in enumerate([(0, 1), (1, 2300), (2300, 2301), (2301, ROWS)]):
        rows.iloc[a:b].to_csv(parts / f"part-{i}.csv", index=False)
    tail = rows.iloc[2301:].replace({"note": {"": None}})  # in a CSV, empty text is a missing value
    tail.to_parquet(tmp_path / "tail.parquet")  # a Parquet file takes the reference path
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    rows.iloc[:2301].to_csv(mixed / "a.csv", index=False)
    (tmp_path / "tail.parquet").rename(mixed / "b.parquet")
    catalog = DatasetCatalog(LocalArtifactStore(tmp_path / "store"))
    ids = {catalog.ingest(name, folder, columns=RULES)[0].id
           for name, folder in (("whole", whole), ("parts", parts), ("mixed", mixed))}
    assert len(ids) == 1
    version = catalog.get("parts")
    assert [f["rows"] for f in version.source["files"]] == [1, 2299, 1, ROWS - 2301]
    import io

    import pyarrow.parquet as pq
    meta = pq.ParquetFile(io.BytesIO(catalog.store.get(version.data_key))).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1000] * 5


def test_a_file_the_fast_path_gives_up_on_is_read_by_the_reference_path(tmp_path) -> None:
    """Naive timestamps, "True"/" 5" style values: accepted as before, the same version as clean data."""
    clean = tmp_path / "clean.csv"
    clean.write_text("id,ts,amount,count,ok,plan,note\n1,2026-01-01T00:00:00Z,1.5,2,true,pro,x\n"
                     "2,2026-01-01T01:00:00Z,2,,false,basic,\n")
    messy = tmp_path / "messy.csv"
    messy.write_text("id,ts,amount,count,ok,plan,note\n1,2026-01-01 00:00:00,1.5,2.0,TRUE,pro,x\n"
                     "2,2026-01-01T01:00:00Z,2,,no,basic,\n")
    catalog = DatasetCatalog(LocalArtifactStore(tmp_path / "store"))
    assert catalog.ingest("a", clean, columns=RULES)[0].id == catalog.ingest("b", messy, columns=RULES)[0].id


def test_floats_are_stored_exactly_as_written(tmp_path, monkeypatch) -> None:
    # pandas.to_numeric reads this one a bit off; float() and Arrow read it exactly
    values = [0.1, 1 / 3, 2.2250738585072014e-308, 123456.78901234567, 9.999999999999999e22]
    text = "id,ts,amount,count,ok,plan,note\n" + "".join(
        f"{i},2026-01-01T00:00:00Z,{v!r},,,pro,\n" for i, v in enumerate(values))
    source = tmp_path / "f.csv"
    source.write_text(text)
    for store, forced in (("fast", False), ("reference", True)):
        if forced:
            reference_only(monkeypatch)
        catalog = DatasetCatalog(LocalArtifactStore(tmp_path / store))
        stored = catalog.load(catalog.ingest("f", source, columns=RULES)[0])["amount"].tolist()
        assert stored == values, store


def test_a_bad_value_deep_in_a_stream_names_its_line_and_stores_nothing(tmp_path, small_blocks) -> None:
    rows = frame()
    source = tmp_path / "orders.csv"
    rows.to_csv(source, index=False)
    lines = source.read_text().split("\n")
    index = next(i for i, line in enumerate(lines) if line.startswith("4000,"))
    lines[index] = lines[index].replace("4000,", "4000x,", 1)
    source.write_text("\n".join(lines))
    store = LocalArtifactStore(tmp_path / "store")
    with pytest.raises(DataValidationError) as err:
        DatasetCatalog(store).ingest("orders", source, columns=RULES)
    assert "column 'id'" in str(err.value) and "'4000x'" in str(err.value) and "line 4002" in str(err.value)
    assert list(store.list()) == []


def test_the_bytes_equal_one_write_of_the_whole_table_when_dictionaries_overflow(tmp_path, monkeypatch) -> None:
    """200k distinct floats overflow Parquet's 1 MB dictionary page, so the encoding falls back to
    plain part-way through a row group; written from many blocks, the bytes must still be those of
    one write of the whole validated table."""
    import hashlib

    monkeypatch.setattr(canonical, "BLOCK", 64 << 10)
    monkeypatch.setattr(canonical, "ROW_GROUP", 150_000)
    rng = np.random.default_rng(2)
    rows = 200_000
    rules = (ColumnRule("id", "int", nullable=False), ColumnRule("score", "float"))
    source = tmp_path / "wide.csv"
    pd.DataFrame({"id": np.arange(rows), "score": rng.random(rows)}).to_csv(source, index=False)
    version, _ = DatasetCatalog(LocalArtifactStore(tmp_path / "store")).ingest("wide", source, columns=rules)
    frame = dataset_checks.validate_file(dataset_checks.read_file(source), rules, source)
    assert version.id == hashlib.sha256(canonical.canonical_parquet(frame, rules)).hexdigest()
