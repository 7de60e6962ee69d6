"""The shipped Kubernetes and KServe manifests start as written.

No container engine runs here, so the test builds what a kubelet would give the container, with
the kernel's own tools: a private mount namespace whose root filesystem is read-only
(``readOnlyRootFilesystem``), the manifest's volumes mounted where it says (the ConfigMap read-only,
each ``emptyDir`` a fresh tmpfs), the process run as the manifest's uid with every capability
dropped and ``no_new_privs``, with only the manifest's environment, running the Dockerfile's
ENTRYPOINT followed by the manifest's ``args``. The registry is a real PostgreSQL and the store a
real S3 endpoint (moto_server), as the manifests require of every replica.

Two deviations, both forced by running on a shared host: the image's ``/opt/loopml`` is this
checkout's virtualenv (on ``PATH`` instead, with the Python it runs on mounted read-only), and
``--port`` is appended with a free port (the
manifests use the default, 8080, which another process here may hold).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml
from churn_models import GOOD, register_versions
from servers import free_port, moto_server, postgres_server

from loopml.context import Workspace
from loopml.examples import churn
from loopml.serving.builtin import post_json

pytestmark = [pytest.mark.slow, pytest.mark.external]
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "manifest-token-7d2e"
ROOTFS_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "opt", "work")

CONTAINER = r"""
set -eu
R="$1"; CONFIGMAP="$2"; SPEC="$3"; shift 3
mount -t tmpfs -o size=16m tmpfs "$R"
for d in $ROOTFS_DIRS; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$R/$d"
  elif [ -d "/$d" ]; then mkdir -p "$R/$d"; mount --rbind "/$d" "$R/$d"; mount -o remount,bind,ro "$R/$d"; fi
done
for p in $BIND_PATHS; do mkdir -p "$R$p"; mount --rbind "$p" "$R$p"; mount -o remount,bind,ro "$R$p"; done
mkdir -p "$R/proc" "$R/dev" "$R/home/loopml"
mount --rbind /proc "$R/proc"; mount --rbind /dev "$R/dev"
"$PY" - "$R" "$CONFIGMAP" "$SPEC" <<'EOF'
import json, subprocess, sys
root, configmap, spec = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
for mount in sorted(spec["mounts"], key=lambda m: m["path"].count("/")):
    target = root + mount["path"]
    subprocess.run(["mkdir", "-p", target], check=True)
    if mount["kind"] == "configMap":
        subprocess.run(["mount", "--bind", configmap, target], check=True)
        if mount["readOnly"]:
            subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)
    else:  # emptyDir: a fresh writable folder, group-owned by fsGroup as the kubelet makes it
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"mode=1777,gid={spec['fsGroup']}", "tmpfs", target],
                       check=True)
EOF
for p in $LATE_BINDS; do mkdir -p "$R$p"; mount --rbind "$p" "$R$p"; mount -o remount,bind,ro "$R$p"; done
mount -o remount,ro "$R"
exec chroot "$R" setpriv --reuid "$UID_" --regid "$UID_" --clear-groups --inh-caps=-all --bounding-set=-all \
  --no-new-privs env -i "$@"
"""


def container_spec(manifest: dict) -> dict:
    """What the kubelet takes from a pod spec: the container, its uid and fsGroup, its volumes."""
    pod = manifest["spec"]["template"]["spec"] if manifest["kind"] == "Deployment" else manifest["spec"]["predictor"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [{"path": m["mountPath"], "readOnly": m.get("readOnly", False),
               "kind": "configMap" if "configMap" in volumes[m["name"]] else "emptyDir"}
              for m in container["volumeMounts"]]
    assert all("configMap" in volumes[m["name"]] or "emptyDir" in volumes[m["name"]]
               for m in container["volumeMounts"])
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    return {"container": container, "uid": security["runAsUser"], "fsGroup": security.get("fsGroup", 0),
            "readOnlyRoot": security.get("readOnlyRootFilesystem", False), "mounts": mounts}


def dockerfile_entrypoint() -> list[str]:
    line = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT"))
    return json.loads(line.removeprefix("ENTRYPOINT"))


def environment(container: dict) -> list[str]:
    env = {"PATH": f"{ROOT / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1",
           "HOME": "/home/loopml"}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # secretKeyRef: the secret's value, as the kubelet injects it
            assert item["valueFrom"]["secretKeyRef"] == {"name": "loopml-serve", "key": "token"}
            env[item["name"]] = TOKEN
    for key in ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK"):
        env[key] = os.environ.get(key, "false")
    return [f"{k}={v}" for k, v in env.items()]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    """PostgreSQL and S3 holding churn v1 under production, and a ConfigMap's worth of project: its
    loopml.toml, pointing every replica at them (the bucket is the manifests' own, my-bucket)."""
    if shutil.which("unshare") is None or shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.fail("this test needs root with unshare and setpriv (util-linux) to build the container")
    root = tmp_path_factory.mktemp("cluster")
    with moto_server(root) as endpoint, postgres_server() as database:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIATEST",
                     aws_secret_access_key="x").create_bucket(Bucket="my-bucket")
        trainer = root / "trainer"
        config = churn.init_project(trainer, n_customers=200, seed=1)
        text = re.sub(r'\[storage\]\nuri = "artifacts"[^\n]*\n', "", config.read_text())
        text += (f'\n[storage]\nuri = "s3://my-bucket/loopml"\n[storage.options]\nendpoint_url = "{endpoint}"\n'
                 'region = "us-east-1"\naccess_key_id = "AKIATEST"\nsecret_access_key = "x"\n'
                 f'\n[registry]\nbackend = "postgres"\n[registry.options]\nurl = "{database}"\n')
        config.write_text(text)
        register_versions(Workspace.open(config), prefix="k8s", reference=True)
        configmap = root / "configmap"
        configmap.mkdir()
        (configmap / "loopml.toml").write_text(text)
        (configmap / ".loopml").mkdir()  # the emptyDir's mount point inside the read-only ConfigMap
        os.chmod(root, 0o755)
        yield configmap


@pytest.mark.parametrize("manifest_path, kind", [
    ("deployments/kubernetes/loopml-serve.yaml", "Deployment"),
    ("deployments/kserve/inferenceservice.yaml", "InferenceService"),
])
def test_the_manifest_starts_as_written_and_reaches_ready(shared: Path, tmp_path: Path, manifest_path: str,
                                                         kind: str) -> None:
    manifest = next(m for m in yaml.safe_load_all((ROOT / manifest_path).read_text()) if m["kind"] == kind)
    spec = container_spec(manifest)
    assert spec["readOnlyRoot"] and spec["uid"] == 10001
    container = spec["container"]
    port = free_port()
    command = [*dockerfile_entrypoint(), *container["args"], "--port", str(port)]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "rootfs").mkdir()
    log = tmp_path / "container.log"
    env = {**os.environ, "ROOTFS_DIRS": " ".join(ROOTFS_DIRS), "UID_": str(spec["uid"]), "PY": sys.executable,
           "BIND_PATHS": sys.base_prefix,  # the Python the virtualenv runs on (wherever it is installed)
           "LATE_BINDS": str(ROOT)}  # the checkout and its virtualenv, after the volumes (it may be under /tmp)
    with log.open("wb") as out:
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", CONTAINER, "container",
                                 str(tmp_path / "rootfs"), str(shared), str(tmp_path / "spec.json"),
                                 *environment(container), *command],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # the readiness probe, as the manifest gives it
            assert proc.poll() is None, f"the container exited {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(base + container["readinessProbe"]["httpGet"]["path"], timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"not ready in 180 s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        assert post_json(base + "/predict", {"rows": [GOOD]})[0] == 401  # the Secret's token is required
        status, body = post_json(base + "/predict", {"rows": [GOOD]}, token=TOKEN)
        assert status == 200 and body["version"] == 1, body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=90)
    assert code in (0, -signal.SIGTERM, 128 + signal.SIGTERM), log.read_text()[-3000:]
    printed = log.read_text()
    assert "Traceback" not in printed and TOKEN not in printed, printed[-3000:]
