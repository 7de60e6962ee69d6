"""Dataset versioning: content addressing, formats, and bad input rejected with nothing stored."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from loopml import canonical, dataset_checks
from loopml.backends.local_store import LocalArtifactStore
from loopml.dataset_rules import ColumnRule
from loopml.datasets import DatasetCatalog
from loopml.errors import DatasetNotFoundError, DataValidationError

RULES = (ColumnRule("id", "int", nullable=False), ColumnRule("ts", "timestamp", nullable=False),
         ColumnRule("amount", "float", min=0), ColumnRule("plan", "category", allowed=("a", "b")))
CSV = "id,ts,amount,plan\n1,2024-01-01T00:00:00Z,10.5,a\n2,2024-01-02T00:00:00Z,3,b\n"


@pytest.fixture
def catalog(tmp_path: Path) -> DatasetCatalog:
    return DatasetCatalog(LocalArtifactStore(tmp_path / "store"))


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_ingest_creates_a_content_addressed_version_with_a_manifest(catalog, tmp_path) -> None:
    version, created = catalog.ingest("orders", _write(tmp_path, "o.csv", CSV), columns=RULES)
    assert created and version.row_count == 2 and len(version.id) == 64
    assert [c.type for c in version.columns] == ["int", "timestamp", "float", "category"]
    assert version.profile["amount"]["max"] == 10.5 and version.profile["plan"]["distinct"] == 2
    assert version.source["files"][0]["rows"] == 2
    frame = catalog.load(version)
    assert list(frame.columns) == ["id", "ts", "amount", "plan"] and len(frame) == 2
    assert catalog.get("orders").id == version.id
    assert catalog.get(f"orders@{version.id[:8]}").id == version.id


def test_identical_data_from_anywhere_makes_no_new_version(catalog, tmp_path) -> None:
    first, _ = catalog.ingest("orders", _write(tmp_path / "a", "o.csv", CSV), columns=RULES)
    again, created = catalog.ingest("orders", _write(tmp_path / "b", "copy.csv", CSV), columns=RULES)
    assert not created and again.id == first.id
    assert len(catalog.versions("orders")) == 1
    changed, created = catalog.ingest("orders", _write(tmp_path / "c", "o.csv", CSV + "3,2024-01-03T00:00:00Z,1,a\n"),
                                      columns=RULES)
    assert created and changed.id != first.id and len(catalog.versions("orders")) == 2


def test_csv_and_parquet_of_the_same_rows_give_the_same_version(catalog, tmp_path) -> None:
    csv_version, _ = catalog.ingest("orders", _write(tmp_path, "o.csv", CSV), columns=RULES)
    frame = pd.read_csv(tmp_path / "o.csv")
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame.to_parquet(tmp_path / "o.parquet")
    pq_version, created = catalog.ingest("orders", tmp_path / "o.parquet", columns=RULES)
    assert not created and pq_version.id == csv_version.id


def test_directories_and_globs_are_read_in_sorted_order(catalog, tmp_path) -> None:
    folder = tmp_path / "parts"
    _write(folder, "part-2.csv", "id,ts,amount,plan\n2,2024-01-02T00:00:00Z,3,b\n")
    _write(folder, "part-1.csv", "id,ts,amount,plan\n1,2024-01-01T00:00:00Z,10.5,a\n")
    by_dir, _ = catalog.ingest("orders", folder, columns=RULES)
    by_glob, created = catalog.ingest("orders", str(folder / "part-*.csv"), columns=RULES)
    assert not created and by_glob.id == by_dir.id
    assert catalog.load(by_dir)["id"].tolist() == [1, 2]


@pytest.mark.parametrize(("content", "file_part", "message"), [
    ("", "empty.csv", "is empty"),
    ("id,ts,amount,plan\n", "empty.csv", "header but no rows"),
    ("id,ts,amount,plan\n1,2024-01-01T00:00:00Z,ten,a\n", "bad.csv", "column 'amount', line 2: expected a number"),
    ("id,ts,amount,plan\n1,2024-01-01T00:00:00Z,-4,a\n", "bad.csv", "outside"),
    ("id,ts,amount,plan\n1,yesterday,4,a\n", "bad.csv", "column 'ts', line 2: expected an ISO 8601"),
    ("id,ts,amount,plan\n,2024-01-01T00:00:00Z,4,a\n", "bad.csv", "column 'id', line 2: value is missing"),
    ("id,ts,amount,plan\n1,2024-01-01T00:00:00Z,4,zzz\n", "bad.csv", "not one of"),
    ("id,ts,amount\n1,2024-01-01T00:00:00Z,4\n", "bad.csv", "lacks declared column(s) ['plan']"),
    ("id,ts,amount,plan,extra\n1,2024-01-01T00:00:00Z,4,a,x\n", "bad.csv", "not in the schema"),
    ("id,ts,amount,plan\n1.5,2024-01-01T00:00:00Z,4,a\n", "bad.csv", "expected a whole number"),
    ("id,ts,amount,plan\n99999999999999999999,2024-01-01T00:00:00Z,4,a\n", "bad.csv",
     "column 'id', line 2: whole number outside the 64-bit integer range"),
])
def test_bad_files_are_rejected_naming_file_column_and_row(catalog, tmp_path, content, file_part, message) -> None:
    path = _write(tmp_path, file_part, content)
    with pytest.raises(DataValidationError) as info:
        catalog.ingest("orders", path, columns=RULES)
    assert message in str(info.value)
    assert file_part in str(info.value)
    assert list(catalog.store.list()) == []  # nothing half-ingested


def test_a_bad_file_among_good_ones_stores_nothing(catalog, tmp_path) -> None:
    folder = tmp_path / "parts"
    _write(folder, "a.csv", CSV)
    _write(folder, "b.csv", "id,ts,amount,plan\n9,2024-01-01T00:00:00Z,oops,a\n")
    with pytest.raises(DataValidationError, match=r"b\.csv.*'amount'.*'oops'"):
        catalog.ingest("orders", folder, columns=RULES)
    assert list(catalog.store.list()) == []


def test_corrupt_parquet_is_rejected(catalog, tmp_path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataValidationError, match=r"broken.parquet.*not readable PARQUET"):
        catalog.ingest("orders", path)


def test_schema_is_inferred_when_not_declared(catalog, tmp_path) -> None:
    version, _ = catalog.ingest("raw", _write(tmp_path, "r.csv", "a,b,c\n1,2.5,x\n2,3.5,y\n"))
    assert [(c.name, c.type) for c in version.columns] == [("a", "int"), ("b", "float"), ("c", "string")]


def test_whole_numbers_beyond_int64_are_inferred_as_strings_and_kept_exactly(catalog, tmp_path) -> None:
    version, _ = catalog.ingest("raw", _write(tmp_path, "r.csv", "id,n\n99999999999999999999,1\n7,2\n"))
    assert [(c.name, c.type) for c in version.columns] == [("id", "string"), ("n", "int")]
    assert list(catalog.load(version)["id"]) == ["99999999999999999999", "7"]


def test_unknown_dataset_reference_lists_known_ones(catalog, tmp_path) -> None:
    catalog.ingest("orders", _write(tmp_path, "o.csv", CSV), columns=RULES)
    with pytest.raises(DatasetNotFoundError, match=r"known datasets: orders"):
        catalog.get("ordrs")
    with pytest.raises(DatasetNotFoundError, match=r"matches no version"):
        catalog.get("orders@ffffffff")


def test_re_ingesting_unchanged_files_is_one_hash_pass_and_writes_nothing(catalog, tmp_path, monkeypatch) -> None:

    path = _write(tmp_path, "orders.csv", CSV)
    first, created = catalog.ingest("orders", path, columns=RULES)
    assert created
    stored = sorted((o.key, o.sha256) for o in catalog.store.list())

    def no_parsing(*args, **kwargs):
        raise AssertionError("an unchanged source was parsed again")

    monkeypatch.setattr(dataset_checks, "read_file", no_parsing)  # neither path may parse it
    monkeypatch.setattr(canonical, "csv_batches", no_parsing)
    moved = _write(tmp_path / "elsewhere", "copy.csv", CSV)  # the same bytes at another path match too
    for source in (path, moved):
        again, created = catalog.ingest("orders", source, columns=RULES)
        assert not created and again.id == first.id
    assert sorted((o.key, o.sha256) for o in catalog.store.list()) == stored  # nothing written
    monkeypatch.undo()
    # Other rules for the same bytes, or other bytes, are a real ingest again.
    looser = tuple(r if r.name != "amount" else ColumnRule("amount", "float") for r in RULES)
    assert catalog.ingest("orders", path, columns=looser)[0].id == first.id  # same rows: same version
    _write(tmp_path, "orders.csv", CSV + "3,2024-01-03T00:00:00Z,1,a\n")
    changed, created = catalog.ingest("orders", path, columns=RULES)
    assert created and changed.id != first.id and changed.row_count == 3


def test_a_file_with_many_bad_values_names_ten_with_their_lines_and_every_bad_column(catalog, tmp_path) -> None:
    rows = [f"{i},2024-01-01T00:00:00Z,{'oops' if i % 3 == 0 else i},a" for i in range(1, 46)]
    rows[4] = "5,yesterday,5,a"  # another column wrong too
    path = _write(tmp_path, "many.csv", "id,ts,amount,plan\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataValidationError) as info:
        catalog.ingest("orders", path, columns=RULES)
    said = str(info.value)
    assert said.startswith("2 columns of") and "'ts', line 6: expected an ISO 8601 timestamp" in said
    assert "column 'amount', line 4: expected a number (float) (value 'oops')" in said
    assert "15 values of this column fail the same way: also line 7 ('oops'), line 10 ('oops')" in said
    assert said.count("'oops'") == 10 and "and 5 more" in said  # ten named, the rest counted
    assert info.value.column == "ts" or info.value.column == "amount"
    assert list(catalog.store.list()) == []
