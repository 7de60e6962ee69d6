"""Conformance suite for feature stores: point-in-time joins and the online store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from loopml.capabilities import RowFeatureStore
from loopml.features import FeatureView


def _ts(text: str) -> Any:
    import pandas as pd

    return pd.Timestamp(text, tz="UTC")


class FeatureStoreSuite:
    """Feature store contract: point-in-time joins offline, the same values online."""

    @pytest.fixture
    def feature_store(self) -> Any:  # pragma: no cover
        raise NotImplementedError("provide a `feature_store` fixture returning an empty store")

    @staticmethod
    def view(ttl_days: float | None = None) -> Any:
        return FeatureView("suite_view", "entity_id", "event_timestamp", ("amount",), ("plan",),
                           timedelta(days=ttl_days) if ttl_days else None)

    @staticmethod
    def source() -> Any:
        import pandas as pd

        return pd.DataFrame({
            "entity_id": [1, 1, 1, 2],
            "event_timestamp": [_ts("2025-01-01"), _ts("2025-01-10"), _ts("2025-01-20"), _ts("2025-01-05")],
            "amount": [10.0, 20.0, 30.0, 90.0], "plan": ["a", "b", "c", "z"],
        })

    def test_historical_features_are_point_in_time_correct(self, feature_store: Any) -> None:
        import pandas as pd

        feature_store.apply(self.view(), self.source())
        entities = pd.DataFrame({"entity_id": [1, 1, 2, 3],
                                 "label_ts": [_ts("2025-01-15"), _ts("2025-01-10"), _ts("2025-01-04"),
                                              _ts("2025-02-01")]})
        out = feature_store.historical_features("suite_view", entities, "label_ts")
        assert out["entity_id"].tolist() == [1, 1, 2, 3]
        assert out["amount"].tolist()[:2] == [20.0, 20.0]  # never the 2025-01-20 value
        assert out["plan"].tolist()[:2] == ["b", "b"]
        assert out["amount"].isna().tolist()[2:] == [True, True]

    def test_ttl_excludes_stale_rows(self, feature_store: Any) -> None:
        import pandas as pd

        feature_store.apply(self.view(ttl_days=7), self.source())
        entities = pd.DataFrame({"entity_id": [1, 1], "label_ts": [_ts("2025-01-12"), _ts("2025-01-19")]})
        out = feature_store.historical_features("suite_view", entities, "label_ts")
        assert out["amount"].tolist()[0] == 20.0 and pd.isna(out["amount"].tolist()[1])

    def test_online_features_match_offline_as_of_materialization(self, feature_store: Any) -> None:
        feature_store.apply(self.view(), self.source())
        assert feature_store.materialize("suite_view", datetime(2025, 1, 15, tzinfo=UTC)) == 2
        online = feature_store.online_features("suite_view", [1, 2, 3])
        assert online["amount"].tolist()[:2] == [20.0, 90.0]
        assert online["plan"].tolist()[:2] == ["b", "z"]
        assert online["amount"].isna().tolist()[2]

    def test_row_lookups_agree_with_online_features_and_see_a_new_materialization(self, feature_store: Any) -> None:
        """A store that looks rows up for servers (``online_rows``) answers as ``online_features``
        does, and a lookup after the next materialization sees its values (not applicable to a
        store without row lookups)."""
        if not isinstance(feature_store, RowFeatureStore):
            pytest.skip("not applicable: this store has no row lookup")
        feature_store.apply(self.view(), self.source())
        feature_store.materialize("suite_view", datetime(2025, 1, 15, tzinfo=UTC))
        rows = feature_store.online_rows("suite_view", [1, 2, 3])
        assert [(r["entity_id"], r["amount"], r["plan"]) for r in rows] == [(1, 20.0, "b"), (2, 90.0, "z"),
                                                                              (3, None, None)]
        feature_store.materialize("suite_view", datetime(2025, 1, 25, tzinfo=UTC))  # a later one
        assert feature_store.online_rows("suite_view", [1])[0]["amount"] == 30.0


# ------------------------------------------------------------------------------------ serving
