"""Conformance suite for artifact stores: round trips, atomic writes, safe keys, integrity."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any

import pytest

from loopml.errors import (
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    UnsafeKeyError,
)

TRAVERSAL_KEYS = ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "a/./b",
                  "%2e%2e/escape", "a/%2E%2E/b", "a\\..\\b", "", "a/", "C:/x", ".hidden",
                  "a\n/b", "a/b\n", "x" * 300, "zz.ref/y", "labels.ref"]


class ArtifactStoreSuite:
    """Store contract: create-only immutable objects, verified reads, safe keys."""

    @pytest.fixture
    def store(self) -> Any:  # pragma: no cover - subclasses provide it
        raise NotImplementedError("provide a `store` fixture returning a fresh, empty store")

    def corrupt(self, store: Any, key: str) -> None:
        """Overwrite the stored bytes of ``key`` behind the store's back (optional)."""
        pytest.skip("not applicable: this store's suite does not implement corrupt()")

    def test_putting_the_same_bytes_again_heals_a_damaged_blob(self, store: Any) -> None:
        data = b"model weights" * 100
        store.put("models/heal/model.pt", data)
        self.corrupt(store, "models/heal/model.pt")
        with pytest.raises(IntegrityError):
            store.get("models/heal/model.pt")
        assert store.put("models/heal/model.pt", data).sha256 == hashlib.sha256(data).hexdigest()
        assert store.get("models/heal/model.pt") == data

    def test_put_then_get_returns_the_same_bytes_and_sha256(self, store: Any) -> None:
        data = b"loopml" * 1000
        info = store.put("models/m1/model.pt", data, metadata={"kind": "model"})
        assert info.sha256 == hashlib.sha256(data).hexdigest()
        assert info.size == len(data)
        assert store.get("models/m1/model.pt") == data
        assert store.info("models/m1/model.pt").metadata["kind"] == "model"

    def test_put_accepts_file_objects_and_paths(self, store: Any, tmp_path: Path) -> None:
        src = tmp_path / "payload.bin"
        src.write_bytes(b"x" * 3_000_000)
        assert store.put("big/from-path", src).size == 3_000_000
        assert store.put("big/from-file", io.BytesIO(b"abc")).size == 3
        out = store.download("big/from-path", tmp_path / "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
        assert out.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()

    def test_same_content_under_same_key_is_idempotent(self, store: Any) -> None:
        first = store.put("a/b", b"same")
        again = store.put("a/b", b"same")
        assert again.sha256 == first.sha256

    def test_different_content_under_existing_key_is_refused(self, store: Any) -> None:
        store.put("a/b", b"one")
        with pytest.raises(ObjectExistsError, match="a/b"):
            store.put("a/b", b"two")
        assert store.get("a/b") == b"one"

    def test_exists_list_and_delete(self, store: Any) -> None:
        for key in ("p/1", "p/2", "q/1"):
            store.put(key, key.encode())
        assert store.exists("p/1") and not store.exists("p/3")
        assert [i.key for i in store.list("p/")] == ["p/1", "p/2"]
        store.delete("p/1")
        assert not store.exists("p/1")
        assert [i.key for i in store.list("p/")] == ["p/2"]

    def test_missing_key_raises_not_found(self, store: Any) -> None:
        with pytest.raises(ObjectNotFoundError, match="nope"):
            store.get("nope")
        with pytest.raises(ObjectNotFoundError):
            store.delete("nope")

    @pytest.mark.parametrize("key", TRAVERSAL_KEYS)
    def test_keys_that_could_escape_the_root_are_rejected(self, store: Any, key: str) -> None:
        with pytest.raises(UnsafeKeyError):
            store.put(key, b"x")
        with pytest.raises(UnsafeKeyError):
            store.get(key)

    def test_corrupted_object_raises_integrity_error(self, store: Any) -> None:
        store.put("c/obj", b"original bytes")
        self.corrupt(store, "c/obj")
        with pytest.raises(IntegrityError, match="c/obj"):
            store.get("c/obj")

    def test_concurrent_writers_of_one_key_agree(self, store: Any) -> None:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                store.put("race/key", b"identical payload")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.get("race/key") == b"identical payload"
