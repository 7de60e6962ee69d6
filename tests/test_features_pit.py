"""Point-in-time correctness: no training row holds a value stamped after its label time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from loopml.backends.local_features import LocalFeatureStore
from loopml.examples import churn
from loopml.features import FeatureView, point_in_time_join

VIEW = FeatureView("customer_activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"),
                   ttl=timedelta(days=45))


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def test_join_takes_the_latest_row_at_or_before_the_label_time() -> None:
    source = pd.DataFrame({
        "customer_id": [1, 1, 1, 2],
        "event_timestamp": [ts("2025-01-01"), ts("2025-01-10"), ts("2025-01-20"), ts("2025-01-05")],
        "tenure_months": [1, 2, 3, 9], "monthly_charges": [10.0, 20.0, 30.0, 90.0],
        "support_calls": [0, 0, 99, 1], "contract": ["month"] * 4, "region": ["north"] * 4,
    })
    labels = pd.DataFrame({"customer_id": [1, 1, 2, 3],
                           "label_timestamp": [ts("2025-01-15"), ts("2025-01-10"), ts("2025-01-04"),
                                               ts("2025-01-30")]})
    out = point_in_time_join(labels, "label_timestamp", source, VIEW)
    assert out["monthly_charges"].tolist()[:2] == [20.0, 20.0]  # exact timestamp matches count
    assert out["support_calls"].tolist()[0] == 0  # the "future" 99 never leaks
    assert out["monthly_charges"].isna().tolist()[2:] == [True, True]  # nothing known yet / unknown entity
    assert out["customer_id"].tolist() == [1, 1, 2, 3]  # input order kept


def test_ttl_drops_stale_feature_rows() -> None:
    source = pd.DataFrame({"customer_id": [1], "event_timestamp": [ts("2025-01-01")],
                           "tenure_months": [1], "monthly_charges": [10.0], "support_calls": [0],
                           "contract": ["month"], "region": ["north"]})
    labels = pd.DataFrame({"customer_id": [1, 1], "label_timestamp": [ts("2025-02-01"), ts("2025-03-01")]})
    out = point_in_time_join(labels, "label_timestamp", source, VIEW)
    assert out["monthly_charges"].notna().tolist() == [True, False]


def test_late_arriving_and_backfilled_rows_never_leak(tmp_path: Path) -> None:
    data = churn.generate(1500, seed=3)
    activity = data.activity.copy()
    # Backfill: rows for old timestamps arrive late, appended at the end of the file.
    late = activity.sample(300, random_state=1).copy()
    late["event_timestamp"] = late["event_timestamp"] - pd.Timedelta(days=10)
    late["support_calls"] = 50
    activity = pd.concat([activity, late], ignore_index=True)
    store = LocalFeatureStore(tmp_path)
    store.apply(VIEW, activity)
    frame = store.historical_features(VIEW.name, data.labels, "label_timestamp")
    stamp = frame[f"{VIEW.name}__event_timestamp"]
    known = stamp.notna()
    assert known.mean() > 0.95
    assert (stamp[known] <= frame.loc[known, "label_timestamp"]).all()
    # The generator marks churners' rows *after* their label time with +6 support calls; none leaks:
    # a joined row is always the latest row at or before the label time.
    by_key = activity.sort_values("event_timestamp").groupby("customer_id")
    for row in frame[known].sample(200, random_state=0).itertuples():
        rows = by_key.get_group(row.customer_id)
        eligible = rows[rows["event_timestamp"] <= row.label_timestamp]
        assert getattr(row, f"{VIEW.name}__event_timestamp") == eligible["event_timestamp"].max()


def test_online_features_equal_offline_features_for_the_same_time(tmp_path: Path) -> None:
    data = churn.generate(500, seed=4)
    store = LocalFeatureStore(tmp_path)
    store.apply(VIEW, data.activity)
    end = data.activity["event_timestamp"].max()
    latest = data.activity.groupby("customer_id")["event_timestamp"].max()
    fresh = int((latest > end - VIEW.ttl).sum())  # churners left: their last row may be past the ttl
    assert 0 < fresh < 500 and store.materialize(VIEW.name, end.to_pydatetime()) == fresh
    ids = data.labels["customer_id"].head(50).tolist()
    online = store.online_features(VIEW.name, ids)
    offline = store.historical_features(
        VIEW.name, pd.DataFrame({"customer_id": ids, "as_of": [end] * len(ids)}), "as_of")
    for col in VIEW.numeric:
        assert online[col].astype(float).tolist() == pytest.approx(offline[col].astype(float).tolist(), nan_ok=True)
    for col in VIEW.categorical:  # a customer past the ttl has no value in either store
        assert online[col].where(online[col].notna(), None).tolist() == \
            offline[col].where(offline[col].notna(), None).tolist()
    missing = store.online_features(VIEW.name, [-1])
    assert missing["monthly_charges"].isna().all()


def test_a_server_sees_a_view_re_applied_by_another_process(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A serving process keeps its view and connection between requests, and still picks up a view
    another process re-applied and re-materialized (within RECHECK_SECONDS)."""
    from loopml.backends import local_features

    data = churn.generate(200, seed=5)
    end = data.activity["event_timestamp"].max().to_pydatetime()
    serving = LocalFeatureStore(tmp_path)
    other = LocalFeatureStore(tmp_path)  # the features flow, elsewhere
    other.apply(VIEW, data.activity)
    customer = int(data.activity["customer_id"].iloc[-1])
    assert serving.online_rows(VIEW.name, [customer])[0]["tenure_months"] is None  # nothing materialized yet
    other.materialize(VIEW.name, end)
    assert serving.online_rows(VIEW.name, [customer])[0]["tenure_months"] is not None  # the first file is read at once
    before = serving.online_rows(VIEW.name, [customer])[0]["tenure_months"]
    narrower = FeatureView(VIEW.name, VIEW.entity, VIEW.timestamp, ("tenure_months",), (), ttl=VIEW.ttl)
    other.apply(narrower, data.activity.assign(tenure_months=data.activity["tenure_months"] + 1000))
    other.materialize(VIEW.name, end)
    monkeypatch.setattr(local_features, "RECHECK_SECONDS", 0.0)  # (a second later, in production)
    row = serving.online_rows(VIEW.name, [customer])[0]
    assert set(row) == {"customer_id", "tenure_months"} and row["tenure_months"] == before + 1000
