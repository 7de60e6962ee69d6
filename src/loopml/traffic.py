"""Synthetic traffic for demos, canaries and swap tests: real HTTP requests to a served model."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from loopml.serving.builtin import post_json


class TrafficGenerator:
    """Posts rows one request at a time and counts answers by HTTP status and model version."""

    def __init__(self, predict_url: str, rows: Sequence[Mapping[str, Any]], token: str | None = None) -> None:
        self.url = predict_url
        self.token = token
        self.rows = list(rows)
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()
        self.errors: list[str] = []
        self._i = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, n: int) -> None:
        for _ in range(n):
            row = self.rows[self._i % len(self.rows)]
            self._i += 1
            try:
                status, body = post_json(self.url, {"rows": [row]}, token=self.token)
            except OSError as exc:  # connection refused/reset: a dropped request
                self.statuses[0] += 1
                self.errors.append(str(exc))
                continue
            self.statuses[status] += 1
            if status == 200:
                self.versions[body["version"]] += 1
            else:
                self.errors.append(str(body.get("error")))

    def start(self) -> TrafficGenerator:
        def loop() -> None:
            while not self._stop.is_set():
                self.send(1)

        self._thread = threading.Thread(target=loop, name="loopml-traffic", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.sent - self.statuses[200]
