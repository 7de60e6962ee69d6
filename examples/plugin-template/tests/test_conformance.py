from pathlib import Path

import pytest

from loopml.testing import TrackerSuite
from loopml_jsonl_tracker import JsonlTracker


class TestJsonlTracker(TrackerSuite):
    @pytest.fixture
    def tracker(self, tmp_path: Path) -> JsonlTracker:
        return JsonlTracker(tmp_path / "runs.jsonl")
