"""The S3 store plugin against a real S3-compatible HTTP server (moto_server), checked with boto3."""

from __future__ import annotations

import base64
import hashlib
import platform
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from servers import moto_server

from loopml.stages.drift_check import drift_reference
from loopml.stages.release import register_and_promote
from loopml.testing import ArtifactStoreSuite

pytestmark = pytest.mark.slow
CREDS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


def client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def make_store(endpoint: str, bucket: str, prefix: str = "loopml", **extra):
    from loopml_s3 import S3ArtifactStore, S3StoreOptions

    client(endpoint).create_bucket(Bucket=bucket)
    return S3ArtifactStore(S3StoreOptions(uri=f"s3://{bucket}/{prefix}", endpoint_url=endpoint,
                                          region="us-east-1", **CREDS, **extra))


class TestS3Store(ArtifactStoreSuite):
    @pytest.fixture
    def store(self, endpoint: str):
        return make_store(endpoint, f"suite-{uuid.uuid4().hex[:12]}", multipart_threshold_mb=5)

    def corrupt(self, store, key: str) -> None:
        sha = store.info(key).sha256
        store.client.put_object(Bucket=store.bucket, Key=store._blob(sha), Body=b"tampered bytes")


def test_boto3_sees_content_addressed_objects_with_matching_checksums(endpoint: str, tmp_path: Path) -> None:
    store = make_store(endpoint, "checksums", multipart_threshold_mb=5)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (12 * 4096))  # 12 MiB: multipart with 5 MiB parts
    info = store.put("models/big.bin", big)
    small = store.put("reports/r.html", b"<h1>hi</h1>")
    s3 = client(endpoint)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="checksums")["Contents"]}
    assert f"loopml/objects/{info.sha256[:2]}/{info.sha256}" in keys
    assert {"loopml/refs/models/big.bin.ref", "loopml/refs/reports/r.html.ref"} <= keys
    # Download with boto3 itself: the bytes hash to the content address.
    body = s3.get_object(Bucket="checksums", Key=f"loopml/objects/{info.sha256[:2]}/{info.sha256}")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == info.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    head = s3.head_object(Bucket="checksums", Key=f"loopml/objects/{small.sha256[:2]}/{small.sha256}",
                          ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == small.sha256
    parts = s3.head_object(Bucket="checksums", Key=f"loopml/objects/{info.sha256[:2]}/{info.sha256}",
                           ChecksumMode="ENABLED")
    assert parts["ContentLength"] == big.stat().st_size
    assert "ChecksumSHA256" in parts  # S3 verified every part's SHA-256 on upload


def test_unknown_bucket_is_a_clear_storage_error(endpoint: str) -> None:
    from loopml.errors import StorageError
    from loopml_s3 import S3ArtifactStore, S3StoreOptions

    store = S3ArtifactStore(S3StoreOptions(uri="s3://no-such-bucket/x", endpoint_url=endpoint,
                                           region="us-east-1", max_attempts=1, **CREDS))
    with pytest.raises(StorageError, match="s3://no-such-bucket/x"):
        store.put("a", b"x")


def test_s3_uri_selects_the_plugin_from_config(endpoint: str, project: Path) -> None:
    from loopml.context import Workspace
    from loopml_s3 import S3ArtifactStore

    client(endpoint).create_bucket(Bucket="from-config")
    (project / "loopml.toml").write_text(
        f'[storage]\nuri = "s3://from-config/team"\n[storage.options]\nendpoint_url = "{endpoint}"\n'
        'region = "us-east-1"\naccess_key_id = "testing"\nsecret_access_key = "testing"\n')
    ws = Workspace.open()
    assert isinstance(ws.store, S3ArtifactStore)
    (project / "d.csv").write_text("a,b\n1,x\n2,y\n")
    version, created = ws.datasets.ingest("tiny", project / "d.csv")
    assert created and ws.datasets.load(version)["a"].tolist() == [1, 2]
    keys = [o["Key"] for o in client(endpoint).list_objects_v2(Bucket="from-config")["Contents"]]
    assert f"team/refs/datasets/tiny/{version.id}/manifest.json.ref" in keys


def test_objects_carry_a_content_type_so_browsers_and_tools_open_them(endpoint: str) -> None:
    store = make_store(endpoint, "content-types")
    s3 = client(endpoint)
    cases = {"reports/churn/validation.html": "text/html; charset=utf-8", "datasets/labels/a.parquet":
             "application/vnd.apache.parquet", "models/churn/abc/train.json": "application/json",
             "models/churn/abc/model.pt2": "application/zip", "misc/blob": "application/octet-stream",
             "exports/models/churn/1/MLmodel": "application/yaml", "exports/models/churn/1/python_env.yaml":
             "application/yaml"}
    for i, (key, expected) in enumerate(cases.items()):
        info = store.put(key, f"content {i}".encode())
        head = s3.head_object(Bucket="content-types", Key=f"loopml/objects/{info.sha256[:2]}/{info.sha256}")
        assert head["ContentType"] == expected, key
    info = store.put("reports/x", b"<h1>hi</h1>", metadata={"content-type": "text/html"})
    head = s3.head_object(Bucket="content-types", Key=f"loopml/objects/{info.sha256[:2]}/{info.sha256}")
    assert head["ContentType"] == "text/html"


def test_an_approved_model_is_exported_as_plain_files_mlflow_loads_from_s3(endpoint: str, tmp_path: Path) -> None:
    """The readable export (what a KServe storageUri points at): plain objects under
    exports/models/<name>/<version>/, downloaded with boto3 and loaded by MLflow's pyfunc loader."""
    import mlflow
    import pandas as pd

    from loopml.artifacts import Predictor
    from loopml.context import Workspace
    from loopml.examples import churn

    churn.init_project(tmp_path / "p", n_customers=500, seed=2)
    client(endpoint).create_bucket(Bucket="exports")
    config = tmp_path / "p" / "loopml.toml"
    config.write_text(config.read_text().replace('uri = "artifacts"', 'uri = "s3://exports/loopml"', 1)
                      + f'\n[storage.options]\nendpoint_url = "{endpoint}"\nregion = "us-east-1"\n'
                        'access_key_id = "testing"\nsecret_access_key = "testing"\n')
    from loop_steps import train_and_validate

    ws = Workspace.open(config, profile="ci")
    candidate, evaluation, key, baseline = train_and_validate(ws)
    model, _ = register_and_promote(ws, candidate, evaluation.report, key, baseline)
    s3 = client(endpoint)
    listed = s3.list_objects_v2(Bucket="exports", Prefix="loopml/exports/models/churn/1/")["Contents"]
    names = {o["Key"].rsplit("/", 1)[1] for o in listed}
    assert names == {"model.pt2", "MLmodel", "requirements.txt", "python_env.yaml", "conda.yaml", "loopml.json",
                     "model_card.md", "validation_report.html"}
    head = s3.head_object(Bucket="exports", Key="loopml/exports/models/churn/1/validation_report.html")
    assert head["ContentType"].startswith("text/html")
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for name in names:
        s3.download_file("exports", f"loopml/exports/models/churn/1/{name}", str(folder / name))
    rows = drift_reference(ws, model).drop(columns=["model_output"], errors="ignore").head(20)
    expected = Predictor.from_bytes(ws.store.get(model.artifact_key)).predict_frame(pd.DataFrame(rows)).reshape(-1)
    got = mlflow.pyfunc.load_model(str(folder)).predict(rows)
    from mlflow.utils.environment import _PythonEnv  # MLflow's own reader of the file it builds from

    env = _PythonEnv.from_yaml(str(folder / "python_env.yaml"))
    assert env.python == platform.python_version() and env.dependencies == ["-r requirements.txt"]
    pins = (folder / "requirements.txt").read_text().split()
    assert f"torch=={torch_version()}" in pins and all("==" in p for p in pins)  # what was validated, pinned
    assert list(got) == pytest.approx(list(expected), abs=1e-6)
    # What a Prefect artifact links to: a presigned URL that opens without S3 credentials.
    import urllib.request

    from loopml.report_index import pointer_markdown, shareable_url

    url = shareable_url(ws, key)
    assert url is not None and url.startswith(endpoint)
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/html") and b"<html" in response.read().lower()
    assert pointer_markdown(ws, key, "validation report", url).startswith(f"[validation report]({url})")


def blob_count(store) -> int:
    return sum(1 for _ in store.s3.objects(store.s3.full("objects") + "/"))


def test_gc_on_s3_removes_what_no_key_names_and_what_retention_expired(endpoint: str) -> None:
    """Before: `loopml store gc` refused S3, and pruned monitor-cursor versions left blobs behind."""
    import time as clock

    from loopml.shared_state import SharedState

    store = make_store(endpoint, f"gc-{uuid.uuid4().hex[:8]}")
    state = SharedState(store, "monitoring/churn/log-cursor")
    for i in range(12):  # each write is a new blob; older versions are pruned (their refs deleted)
        state.write(state.read().version, {"n": i})
    store.put("models/churn/1/model.pt2", b"model bytes")
    kept = {info.key: store.get(info.key) for info in store.list()}
    unnamed = blob_count(store) - len({info.sha256 for info in store.list()})
    assert unnamed >= 5  # the pruned versions' blobs (before: left for good, 21 after 10 monitor runs)
    clock.sleep(1.1)
    store.gc(grace_seconds=1.0)  # unnamed blobs go to quarantine
    assert blob_count(store) == len({store.info(k).sha256 for k in kept})
    clock.sleep(1.1)
    result = store.gc(grace_seconds=1.0)  # and, still unnamed a grace period later, for good
    assert result.blobs == unnamed and result.bytes_freed > 0
    assert not list(store.s3.objects(store.s3.full("quarantine") + "/"))
    assert {k: store.get(k) for k in kept} == kept  # every key still reads, verified


def test_gc_on_s3_is_safe_beside_writers_on_other_machines(endpoint: str) -> None:
    """Writers keep putting keys (half of them reusing blobs that exist and are unreferenced) and
    deleting others while gc runs with a short grace: no key ever names a missing blob."""
    import random
    import threading
    import time as clock

    bucket = f"gc-race-{uuid.uuid4().hex[:8]}"
    gc_store = make_store(endpoint, bucket)
    from loopml_s3 import S3ArtifactStore, S3StoreOptions

    def writer_store():  # a store object of its own, as on another machine
        return S3ArtifactStore(S3StoreOptions(uri=f"s3://{bucket}/loopml", endpoint_url=endpoint,
                                              region="us-east-1", **CREDS))

    pool = [f"content {i}".encode() for i in range(6)]  # few contents: blobs are reused all the time
    stop = threading.Event()
    errors: list[str] = []

    def writer(n: int) -> None:
        store, rng, mine = writer_store(), random.Random(n), []
        while not stop.is_set():
            key = f"w{n}/{uuid.uuid4().hex[:8]}"
            store.put(key, rng.choice(pool))
            mine.append(key)
            if len(mine) > 3:
                store.delete(mine.pop(0))  # leaves its blob unreferenced, until another key reuses it
            try:
                store.get(key)
            except Exception as exc:  # a blob swept under a writer
                errors.append(f"{key}: {exc}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    swept = 0
    deadline = clock.monotonic() + 20
    while clock.monotonic() < deadline:
        swept += gc_store.gc(grace_seconds=1.0).blobs
    stop.set()
    for t in threads:
        t.join(60)
    assert errors == []
    for info in gc_store.list():
        gc_store.get(info.key)  # every key reads back, checksum verified
    for _ in range(2):  # once writers stop, two passes a grace period apart leave only named blobs
        clock.sleep(1.1)
        gc_store.gc(grace_seconds=1.0)
    live = {info.sha256 for info in gc_store.list()}
    assert blob_count(gc_store) == len(live)
    assert not list(gc_store.s3.objects(gc_store.s3.full("quarantine") + "/"))
    print(f"swept {swept} blobs while writers ran")


def test_a_writer_reusing_an_old_unreferenced_blob_keeps_it_from_the_sweep(endpoint: str) -> None:
    """The race a grace period alone cannot close: gc finds an old unreferenced blob just as a
    writer decides to reuse it. The writer touches it first, so gc leaves it."""
    import time as clock

    from loopml.backends.content_store import write_hashed  # noqa: F401 - the path writers take

    store = make_store(endpoint, f"gc-touch-{uuid.uuid4().hex[:8]}")
    store.put("a", b"shared bytes")
    store.delete("a")  # unreferenced now
    clock.sleep(1.1)  # and older than the grace period
    with store.s3.staged(b"shared bytes") as staged:
        store.s3.keep_blob(staged, "application/octet-stream")  # a writer: the blob exists, reuse it
        assert store.gc(grace_seconds=1.0).blobs == 0  # gc runs between the writer's two steps
        store.put("b", b"shared bytes")  # the writer names it
    assert store.get("b") == b"shared bytes"


def test_a_writer_slower_than_the_grace_period_still_names_a_blob_that_exists(endpoint: str) -> None:
    """The writer saw the blob, then stalled past the grace period while two sweeps quarantined
    and deleted it; when its ref lands it checks the blob and uploads the bytes again."""
    bucket = f"gc-slow-{uuid.uuid4().hex[:8]}"
    store = make_store(endpoint, bucket)
    collector = make_store(endpoint, bucket)  # gc on another machine
    store.put("old", b"shared bytes")
    store.delete("old")
    kept = store.s3.keep_blob

    def stalled_keep_blob(staged, content_type: str) -> None:
        kept(staged, content_type)  # the blob exists: the writer will only name it
        collector.gc(grace_seconds=0)  # quarantined
        collector.gc(grace_seconds=0)  # and deleted for good, before the ref is written
        assert not store.s3._blob_ok(staged.sha256)

    store.s3.keep_blob = stalled_keep_blob
    store.put("new", b"shared bytes")
    assert collector.get("new") == b"shared bytes"


def test_two_readers_of_a_quarantined_blob_both_read_it(endpoint: str) -> None:
    """Two readers find a named blob in quarantine at once; the one that restores it second finds
    the quarantine empty and still reads the blob the first one put back."""
    bucket = f"gc-readers-{uuid.uuid4().hex[:8]}"
    first, second = make_store(endpoint, bucket), make_store(endpoint, bucket)
    sha = first.put("k", b"named bytes").sha256
    s3 = client(endpoint)
    s3.copy_object(Bucket=bucket, Key=first.s3.quarantined(sha), CopySource={"Bucket": bucket, "Key": first._blob(sha)})
    s3.delete_object(Bucket=bucket, Key=first._blob(sha))  # a sweep that listed refs before "k" was written
    restore = second.s3.restore

    def restored_first_by_the_other_reader(sha256: str) -> bool:
        assert first.s3.restore(sha256)
        return restore(sha256)  # finds nothing left in quarantine

    second.s3.restore = restored_first_by_the_other_reader
    assert second.get("k") == b"named bytes"


def torch_version() -> str:
    import torch

    return torch.__version__  # the build too: 2.13.0+cpu, not PyPI's CUDA 2.13.0

