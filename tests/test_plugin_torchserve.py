"""The TorchServe plugin against a real TorchServe (Java) on 127.0.0.1, started and stopped here."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopml.context import BackendContext
from loopml.serving import post_json
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

    def test_bad_requests_sent_straight_to_torchserve_get_4xx(self, serving, model_files) -> None:
        url = serving.deploy(self.model_version(1, model_files[1]), model_files[1])
        assert url.startswith("http://127.0.0.1:")
        endpoint = f"{url}/predictions/suite-model"
        status, body = post_json(endpoint, {"rows": [self.GOOD]})
        assert status == 200 and body["version"] == 1
        status, body = post_json(endpoint, {"rows": [{**self.GOOD, "region": 5}]})
        assert status == 422 and "rows[0].region" in json.dumps(body)
        request = urllib.request.Request(endpoint, data=b"{oops", headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=30)
        assert 400 <= info.value.code < 500
        assert post_json(endpoint, {"rows": [self.GOOD]})[0] == 200  # still serving
