from pathlib import Path

import pytest
from loopml_jsonl_tracker import JsonlTracker

from loopml.testing import TrackerSuite


class TestJsonlTracker(TrackerSuite):
    @pytest.fixture
    def tracker(self, tmp_path: Path) -> JsonlTracker:
        return JsonlTracker(tmp_path / "runs.jsonl")
