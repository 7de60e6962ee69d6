"""The TorchServe plugin against a real TorchServe (Java) on 127.0.0.1, started and stopped here."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopml.context import BackendContext
from loopml.serving.builtin import post_json
from loopml.testing import ServingBackendSuite

pytestmark = pytest.mark.slow


def make_backend(home: Path):
    from loopml_torchserve import TorchServeOptions, _factory

    return _factory(TorchServeOptions(), BackendContext("t", home, home / ".loopml"))


class TestTorchServe(ServingBackendSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def shared(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
        backend = make_backend(tmp_path_factory.mktemp("torchserve"))
        yield backend
        backend.stop()

    @pytest.fixture
    def serving(self, shared):
        yield shared
        # Back to a clean slate between tests, without restarting Java: TorchServe removes the
        # default version only once it is the last one.
        serving_now = set(shared.weights)
        for version in sorted(shared.registered_versions(), key=lambda v: v in serving_now):
            shared.weights = {}
            shared.undeploy(version)
        shared.model = None

    @pytest.mark.parametrize("front", ["torchserve_url", "url"])
    def test_bad_requests_get_4xx_from_torchserve_and_through_loopmls_router(self, serving, model_files,
                                                                             front: str) -> None:
        serving.deploy(self.model_version(1, model_files[1]), model_files[1])
        url = serving.status()[front]
        assert url.startswith("http://127.0.0.1:")
        endpoint = f"{url}/predictions/suite-model"
        token = serving.inference_token
        assert token  # token auth is on by default; the backend holds the key
        status, body = post_json(endpoint, {"rows": [self.GOOD]})
        assert status == 400 and "token" in json.dumps(body).lower()  # TorchServe answers 400 without a token
        status, body = post_json(endpoint, {"rows": [self.GOOD]}, token=token)
        assert status == 200 and body["version"] == 1
        status, body = post_json(endpoint, {"rows": [{**self.GOOD, "region": [5]}]}, token=token)
        assert status == 422 and "rows[0].region" in json.dumps(body)
        request = urllib.request.Request(endpoint, data=b"{oops", headers={"Content-Type": "application/json",
                                                                            "Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert 400 <= info.value.code < 500
        assert post_json(endpoint, {"rows": [self.GOOD]}, token=token)[0] == 200  # still serving

    def test_the_router_splits_traffic_and_mirrors_a_shadow_into_the_log(self, serving, model_files) -> None:
        import dataclasses

        from loopml import prediction_records
        from loopml.predlog import read_since

        for version in (1, 2):  # versions that know their entity column: it is logged with each row
            model = dataclasses.replace(self.model_version(version, model_files[version]),
                                        lineage={"entity": "customer_id"})
            serving.deploy(model, model_files[version])
        endpoint = serving.status()["predict_url"]
        token = serving.inference_token
        serving.set_traffic({1: 0.5, 2: 0.5})
        seen = [post_json(endpoint, {"rows": [{**self.GOOD, "customer_id": i}]}, token=token)[1]["version"]
                for i in range(60)]
        assert set(seen) == {1, 2}
        records, _ = read_since(serving.prediction_log_dir, "suite-model")
        served = [r for r in records if r.get("entity") is not None]
        assert sorted(r["entity"] for r in served) == list(range(60))  # delayed labels can join by entity
        assert len({r["request_id"] for r in served}) == 60 and "customer_id" not in served[0]["inputs"]
        # the built-in server's records and layout: one segment per worker process and hour, no legacy file
        assert all(prediction_records.parse(r) is not None for r in records)
        assert not (serving.prediction_log_dir / "suite-model.jsonl").exists()
        assert list((serving.prediction_log_dir / "suite-model").glob("*/*/*.jsonl"))
        serving.set_traffic({1: 1.0})
        serving.set_shadow(2)
        answered = [post_json(endpoint, {"rows": [self.GOOD, self.GOOD]}, token=token)[1] for _ in range(20)]
        assert {a["version"] for a in answered} == {1}  # answers come from production only
        deadline = time.monotonic() + 120  # mirrored copies are sent after each answer: wait for all 40 rows
        while True:
            records, _ = read_since(serving.prediction_log_dir, "suite-model")
            shadow = [r for r in records if r.get("shadow")]
            if len(shadow) >= 40 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(shadow) == 40 and {r["version"] for r in shadow} == {2}
        assert all(r["primary_version"] == 1 and isinstance(r["primary_output"], float) for r in shadow)
        with pytest.raises(Exception, match="still receives traffic"):
            serving.undeploy(2)
        serving.set_shadow(None)

    def test_a_second_torchserve_runs_beside_it_and_archives_are_keyed_by_content(
            self, serving, model_files, tmp_path) -> None:
        serving.deploy(self.model_version(1, model_files[1]), model_files[1])
        # A project folder deeper than a Unix socket path may be (107 bytes) still serves: the
        # worker sockets live in a short temp dir of their own, removed at stop.
        deep_home = tmp_path / ("a-project-folder-with-a-long-name-" * 4)
        assert len(str(deep_home)) > 120
        other = make_backend(deep_home)
        try:  # its own HTTP, gRPC and worker ports: both answer at once
            other.deploy(self.model_version(1, model_files[2]), model_files[2])
            assert other.predict([self.GOOD])["version"] == 1
            assert serving.predict([self.GOOD])["version"] == 1
            assert set(other.ports.values()).isdisjoint(serving.ports.values())
            sockets_dir = other._tmp
            assert sockets_dir is not None and list(sockets_dir.glob(".ts.sock.*"))
        finally:
            other.stop()
        assert not sockets_dir.exists()
        names = sorted(p.name for p in serving.store.glob("suite-model-v1-*.mar"))
        assert all(len(n.split("-v1-")[1]) == len("0123456789abcdef.mar") for n in names)
