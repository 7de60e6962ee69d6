"""The Feast plugin with Feast's real local provider: Parquet offline store, SQLite online store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from servers import redis_server

from loopml.context import BackendContext
from loopml.examples import churn
from loopml.features import FeatureView
from loopml.testing import FeatureStoreSuite

pytestmark = pytest.mark.slow
VIEW = FeatureView("customer_activity", "customer_id", "event_timestamp",
                   ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"),
                   ttl=timedelta(days=45))


def make_store(root: Path):
    from loopml_feast import FeastOptions, _factory

    return _factory(FeastOptions(), BackendContext("t", root, root / ".loopml"))


class TestFeastFeatureStore(FeatureStoreSuite):
    @pytest.fixture
    def feature_store(self, tmp_path: Path):
        return make_store(tmp_path)


class TestFeastWithRedisOnline(FeatureStoreSuite):
    """The same contract with Feast's Redis online store, on a real redis-server."""

    @pytest.fixture(scope="class")
    @classmethod
    def redis(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
        with redis_server(tmp_path_factory.mktemp("redis")) as address:
            yield address

    @pytest.fixture
    def feature_store(self, tmp_path: Path, redis: str):
        from pydantic import SecretStr

        from loopml_feast import FeastFeatureStore, FeastOptions

        project = f"p{tmp_path.name[-12:].replace('-', '_')}"  # one Feast project (key space) per test
        return FeastFeatureStore(FeastOptions(project=project, redis_connection_string=SecretStr(redis)),
                                 tmp_path / "repo")


def test_late_and_backfilled_rows_never_leak_through_feast(tmp_path: Path) -> None:
    data = churn.generate(800, seed=3)
    late = data.activity.sample(200, random_state=1).copy()
    late["event_timestamp"] = late["event_timestamp"] - pd.Timedelta(days=10)
    late["support_calls"] = 50
    activity = pd.concat([data.activity, late], ignore_index=True)
    store = make_store(tmp_path)
    store.apply(VIEW, activity)
    frame = store.historical_features(VIEW.name, data.labels, "label_timestamp")
    assert frame["customer_id"].tolist() == data.labels["customer_id"].tolist()  # rows and order kept
    stamp = frame[f"{VIEW.name}__event_timestamp"]
    known = stamp.notna()
    assert known.mean() > 0.9
    assert (stamp[known] <= pd.to_datetime(frame.loc[known, "label_timestamp"], utc=True)).all()


def test_online_features_equal_the_offline_features_used_for_training(tmp_path: Path) -> None:
    from loopml.backends.local_features import LocalFeatureStore

    data = churn.generate(300, seed=4)
    feast_store, local = make_store(tmp_path / "feast"), LocalFeatureStore(tmp_path / "local")
    end = data.activity["event_timestamp"].max()
    ids = data.labels["customer_id"].head(40).tolist()
    entities = pd.DataFrame({"customer_id": ids, "as_of": [end] * len(ids)})
    for store in (feast_store, local):
        store.apply(VIEW, data.activity)
        store.materialize(VIEW.name, end.to_pydatetime())
    online = feast_store.online_features(VIEW.name, ids)
    offline = feast_store.historical_features(VIEW.name, entities, "as_of")
    reference = local.historical_features(VIEW.name, entities, "as_of")  # the pandas engine agrees
    assert online["monthly_charges"].isna().any()  # churners whose last row is past the ttl: served by neither
    for col in VIEW.numeric:
        assert online[col].astype(float).tolist() == pytest.approx(offline[col].astype(float).tolist(), nan_ok=True)
        assert offline[col].astype(float).tolist() == pytest.approx(reference[col].astype(float).tolist(),
                                                                    nan_ok=True)
    for col in VIEW.categorical:
        def plain(series: pd.Series) -> list:
            return series.where(series.notna(), None).tolist()
        assert plain(online[col]) == plain(offline[col]) == plain(reference[col])


def test_the_repo_is_a_feast_repo_that_feasts_own_cli_plans_applies_and_materializes(tmp_path: Path) -> None:
    """What loopml applied is what the repo's files define, in paths relative to the repo: a team
    copies (or commits) it elsewhere, and Feast's CLI there plans no change twice after an apply,
    materializes, and loopml reads what Feast wrote. Names and types are the project's own."""
    import os
    import shutil
    import subprocess
    import sys

    from feast import FeatureStore
    from feast.types import Float64, Int64

    from loopml_feast import FeastOptions, _factory

    data = churn.generate(300, seed=5)
    store = _factory(FeastOptions(), BackendContext("churn-example", tmp_path, tmp_path / ".loopml"))
    store.apply(VIEW, data.activity)
    store.materialize(VIEW.name, data.activity["event_timestamp"].max())  # as every features run does
    assert (store.repo / "feature_store.yaml").is_file() and (store.repo / f"loopml_{VIEW.name}.py").is_file()
    assert str(tmp_path) not in (store.repo / "feature_store.yaml").read_text()
    assert str(tmp_path) not in (store.repo / f"loopml_{VIEW.name}.py").read_text()
    repo = tmp_path.parent / f"{tmp_path.name}-copied" / "feast"
    shutil.copytree(store.repo, repo)
    shutil.rmtree(store.repo)  # only the copy is left
    feast = shutil.which("feast", path=os.path.dirname(sys.executable)) or "feast"
    env = {**os.environ, "FEAST_USAGE": "False"}

    def cli(*args: str) -> str:
        result = subprocess.run([feast, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    plan = cli("plan")
    assert "Deleted" not in plan and "Created feature view" not in plan, plan  # the files define what loopml applied
    cli("apply")
    for _ in range(2):  # Feast stamps a source with the time its file is read: loopml's files pin it
        plan = cli("plan")
        assert "No changes to registry" in plan and "Updated" not in plan and "Created" not in plan, plan
    assert VIEW.name in cli("feature-views", "list")
    feast_store = FeatureStore(repo_path=str(repo))
    assert feast_store.project == "churn_example"  # the loopml project's name, as Feast spells names
    types = {f.name: f.dtype for f in feast_store.get_feature_view(VIEW.name).schema}
    assert types["tenure_months"] == Int64 and types["support_calls"] == Int64  # declared int
    assert types["monthly_charges"] == Float64
    end = data.activity["event_timestamp"].max()
    cli("materialize", (end - timedelta(days=40)).isoformat(), end.isoformat())
    ids = data.labels["customer_id"].head(20).tolist()
    reader = _factory(FeastOptions(repo_path=repo), BackendContext("churn-example", tmp_path, tmp_path / ".loopml"))
    online = reader.online_features(VIEW.name, ids)  # loopml reads what Feast wrote, from the copy
    assert online["monthly_charges"].notna().any() and online["tenure_months"].notna().any()


TEAM_REPO = '''
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
activity = FileSource(name="team_activity_source", path="{path}", timestamp_field="event_timestamp")
team_activity = FeatureView(
    name="team_activity", entities=[customer], ttl=timedelta(days=45), online=True, source=activity,
    schema=[Field(name="customer_id", dtype=Int64), Field(name="tenure_months", dtype=Float64),
            Field(name="monthly_charges", dtype=Float64), Field(name="support_calls", dtype=Float64),
            Field(name="contract", dtype=String), Field(name="region", dtype=String)])
churn_features = FeatureService(name="churn_features", features=[team_activity])
'''


def test_loopml_reads_through_a_feature_service_of_the_teams_own_feast_repo(tmp_path: Path) -> None:
    """A team that already runs Feast points loopml at its repo and service: loopml trains and serves
    from them, point in time, and never writes to the repo."""
    import hashlib
    import os
    import shutil
    import subprocess
    import sys

    from loopml.backends.local_features import LocalFeatureStore
    from loopml.errors import DataValidationError
    from loopml_feast import FeastFeatureStore, FeastOptions

    data = churn.generate(300, seed=6)
    repo = tmp_path / "team-repo"
    repo.mkdir()
    frame = data.activity.copy()
    for name in VIEW.numeric:
        frame[name] = frame[name].astype("float64")
    frame.to_parquet(repo / "activity.parquet", index=False)
    (repo / "feature_store.yaml").write_text(
        f"project: team\nprovider: local\nregistry: {repo / 'registry.db'}\n"
        f"online_store: {{type: sqlite, path: {repo / 'online.db'}}}\noffline_store: {{type: file}}\n"
        "entity_key_serialization_version: 3\n")
    (repo / "definitions.py").write_text(TEAM_REPO.replace("{path}", str(repo / "activity.parquet")))
    feast = shutil.which("feast", path=os.path.dirname(sys.executable)) or "feast"
    applied = subprocess.run([feast, "apply"], cwd=repo, env={**os.environ, "FEAST_USAGE": "False"},
                             capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    def repo_files() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in repo.iterdir()
                if p.suffix in (".py", ".yaml")}

    before = repo_files()

    store = FeastFeatureStore(FeastOptions(feature_service="churn_features"), repo)
    store.apply(VIEW, data.activity)  # checks the service has loopml's features; writes nothing
    end = data.activity["event_timestamp"].max()
    store.materialize(VIEW.name, end.to_pydatetime())
    ids = data.labels["customer_id"].head(30).tolist()
    entities = pd.DataFrame({"customer_id": ids, "as_of": [end] * len(ids)})
    offline = store.historical_features(VIEW.name, entities, "as_of")
    local = LocalFeatureStore(tmp_path / "local")
    local.apply(VIEW, data.activity)
    reference = local.historical_features(VIEW.name, entities, "as_of")  # the same point-in-time answer
    for col in VIEW.numeric:
        assert offline[col].astype(float).tolist() == pytest.approx(reference[col].astype(float).tolist(),
                                                                    nan_ok=True)
    online = FeastFeatureStore(FeastOptions(feature_service="churn_features"), repo).online_features(VIEW.name, ids)
    assert online["monthly_charges"].astype(float).tolist() == pytest.approx(
        offline["monthly_charges"].astype(float).tolist(), nan_ok=True)
    assert repo_files() == before and not (repo / f"loopml_{VIEW.name}.py").exists()  # the team's repo is untouched

    wider = FeatureView(VIEW.name, VIEW.entity, VIEW.timestamp, (*VIEW.numeric, "arpu"), VIEW.categorical)
    with pytest.raises(DataValidationError, match=r"churn_features.*lacks feature\(s\) \['arpu'\]"):
        store.apply(wider, data.activity)
