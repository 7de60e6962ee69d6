"""Mergeable drift sketches: partitions merge exactly, the KS statistic stays within its stated
bound of the exact one, and a large check flags the same features as the exact path."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from loopml import sketches
from loopml.drift import detect_drift, drift_from_sketches, ks_two_sample
from loopml.sketches import SketchMismatchError, WindowSketch
from loopml.stages.drift_check import check_drift
from loopml.stages.project import view_of


def columns(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    with_gaps = rng.normal(shift, 1, n)
    with_gaps[rng.random(n) < 0.05] = np.nan
    with_inf = rng.normal(0, 1, n)
    with_inf[:3] = np.inf
    with_inf[3:5] = -np.inf
    return {"normal": rng.normal(shift, 1, n), "lognormal": rng.lognormal(shift, 1, n),
            "cauchy": rng.standard_cauchy(n) + shift, "poisson": rng.poisson(2 + shift, n).astype(float),
            "with_gaps": with_gaps, "with_inf": with_inf}


@pytest.mark.parametrize("shift", [0.0, 0.02, 0.3])
def test_ks_from_sketches_brackets_the_exact_statistic(shift: float) -> None:
    rng = np.random.default_rng(7)
    ref, cur = columns(rng, 50_000), columns(rng, 30_000, shift)
    for name in ref:
        r = sketches.sketch_numeric(ref[name])
        c = sketches.sketch_numeric(cur[name], r.edges)
        d, bound = sketches.ks_statistic(r, c)
        exact, _ = ks_two_sample(ref[name], cur[name])
        assert d - 1e-12 <= exact <= d + bound + 1e-12, (name, d, bound, exact)
        assert bound <= 2.0 / sketches.EDGES, name
        if name == "poisson":  # fewer distinct values than edges: exact
            assert bound == 0.0 and d == pytest.approx(exact, abs=1e-12)


def test_partitions_merge_to_the_sketch_of_the_whole_window() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(columns(rng, 40_000)).assign(k=rng.choice(["a", "b", None], 40_000))
    numeric = ["normal", "cauchy", "with_gaps", "with_inf"]
    reference = sketches.sketch_frame(frame.iloc[:10_000], numeric=numeric, categorical=["k"])
    whole = sketches.sketch_frame(frame, numeric=numeric, categorical=["k"], edges=reference.edges)
    cuts = [0, 1, 777, 12_000, 12_001, 39_999, 40_000]
    parts = [sketches.sketch_frame(frame.iloc[a:b], numeric=numeric, categorical=["k"], edges=reference.edges)
             for a, b in itertools.pairwise(cuts)]
    merged = sketches.merge_all(parts)
    assert merged.rows == whole.rows == 40_000
    for name in numeric:
        assert np.array_equal(merged.numeric[name].below, whole.numeric[name].below)
        assert np.array_equal(merged.numeric[name].at_or_below, whole.numeric[name].at_or_below)
        assert merged.numeric[name].missing == whole.numeric[name].missing
    assert merged.categorical["k"].counts == whole.categorical["k"].counts
    assert whole.categorical["k"].counts["(missing)"] == int(frame["k"].isna().sum())
    one = drift_from_sketches(reference, whole, alpha=0.01, min_samples=100)
    many = drift_from_sketches(reference, merged, alpha=0.01, min_samples=100)
    assert one == many


def test_a_large_check_flags_the_same_features_as_the_exact_path() -> None:
    rng = np.random.default_rng(11)
    n = 60_000
    shifts = {f"f{i}": (0.05 if i % 5 == 0 else 0.0) for i in range(30)}  # 6 drift, 24 do not
    reference = pd.DataFrame({k: rng.normal(0, 1, n) for k in shifts}).assign(k=rng.choice(list("xyz"), n))
    current = pd.DataFrame({k: rng.normal(s, 1, n) for k, s in shifts.items()}).assign(
        k=rng.choice(list("xyz"), n, p=[0.3, 0.3, 0.4]))
    kwargs = dict(numeric=list(shifts), categorical=["k"], alpha=0.01, min_samples=100)
    exact = detect_drift(reference, current, **kwargs)
    sketched = detect_drift(reference, current, exact_up_to=0, **kwargs)
    assert exact.drifted_features == sketched.drifted_features == (*[k for k, s in shifts.items() if s], "k")
    for e, s in zip(exact.features, sketched.features, strict=True):
        assert s.statistic <= e.statistic + 1e-12 <= s.statistic + s.statistic_error + 2e-12
        if e.kind == "categorical":
            assert (s.statistic, s.p_value) == (e.statistic, e.p_value)


def test_sketches_round_trip_without_pickle_and_refuse_mismatched_edges(tmp_path) -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"x": rng.normal(0, 1, 5000), "k": rng.choice(["a", "ü", None], 5000)})
    sketch = sketches.sketch_frame(frame, numeric=["x"], categorical=["k"])
    back = WindowSketch.from_bytes(sketch.to_bytes())
    assert back.rows == 5000 and back.categorical == sketch.categorical
    assert np.array_equal(back.numeric["x"].edges, sketch.numeric["x"].edges)
    assert np.array_equal(back.numeric["x"].at_or_below, sketch.numeric["x"].at_or_below)
    other = sketches.sketch_frame(frame.iloc[:100], numeric=["x"], categorical=["k"])  # its own edges
    with pytest.raises(SketchMismatchError, match="edges"):
        sketch.merge(other)
    with pytest.raises(SketchMismatchError, match="different features"):
        sketch.merge(sketches.sketch_frame(frame, numeric=[], categorical=["k"]))
    evil = tmp_path / "evil.npz"
    np.savez(evil, header=np.array([{"format": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        WindowSketch.from_bytes(evil.read_bytes())


def test_a_large_window_is_checked_on_sketches_and_the_reference_sketch_is_stored(tmp_path, monkeypatch) -> None:
    import base64
    import io
    import re

    from loopml import drift
    from loopml.context import Workspace
    from loopml.examples import churn

    churn.init_project(tmp_path, n_customers=300)
    ws = Workspace.open(tmp_path / "loopml.toml")
    features = view_of(ws).features
    reference = pd.DataFrame(churn.request_rows(churn.generate(3000, seed=1), features))
    ws.store.put("models/churn/x/reference.parquet", reference.to_parquet())
    shifted = pd.DataFrame(churn.request_rows(churn.generate(3000, seed=2, drift=1.0), features))
    exact, _, _ = check_drift(ws, reference, shifted, "ref", production_version=1)

    monkeypatch.setattr(drift, "EXACT_UP_TO", 1000)  # 6,000 rows now count as a large window
    stored = pd.read_parquet(io.BytesIO(ws.store.get("models/churn/x/reference.parquet")))
    stored.attrs["loopml_key"] = "models/churn/x/reference.parquet"  # as drift_reference marks it
    report, key, _ = check_drift(ws, stored, shifted, "ref", production_version=2)
    assert report.drifted_features == exact.drifted_features and report.drifted_features
    # 3,000 reference rows: fewer than 4,096 edges, so every value is an edge and the sketch is exact
    assert [f.statistic for f in report.features] == pytest.approx([f.statistic for f in exact.features])
    assert all(f.statistic_error == 0 for f in report.features)
    cached = [o.key for o in ws.store.list("models/churn/x/") if "reference-sketch-" in o.key]
    assert len(cached) == 1
    html = ws.store.get(key).decode()
    pngs = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(pngs) == len(report.features) and base64.b64decode(pngs[0]).startswith(b"\x89PNG")
    again, _, _ = check_drift(ws, stored, shifted, "ref", production_version=3)  # the cached sketch
    assert [f.p_value for f in again.features] == [f.p_value for f in report.features]
