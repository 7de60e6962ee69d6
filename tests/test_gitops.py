"""GitOps: manifests pinned to one model version and its artifact, rendered the same every time,
valid for Kubernetes, and a server that serves that artifact or nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from loop_steps import loop_once

from loopml.cli import main
from loopml.context import Workspace
from loopml.errors import ConfigError
from loopml.examples import churn
from loopml.serving.follower import build_service

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_a_rendered_folder_pins_the_version_and_the_server_holds_to_it(tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "p"
    config = churn.init_project(folder, n_customers=500)
    monkeypatch.chdir(folder)
    first = loop_once(config)
    assert main(["render", "k8s", "churn@production", "deploy/churn"]) == 0
    rendered = {p.name: p.read_bytes() for p in (folder / "deploy" / "churn").iterdir()}
    assert set(rendered) == {"deployment.yaml", "service.yaml", "kustomization.yaml"}
    deployment = yaml.safe_load(rendered["deployment.yaml"])
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == [f"churn:{first.version}", "--sha256", first.artifact_sha256]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["loopml.dev/artifact-sha256"] == \
        first.artifact_sha256
    assert b"&id" not in rendered["deployment.yaml"]  # plain YAML: no anchors for a reviewer to chase
    checked = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0",
                              "deploy/churn/deployment.yaml", "deploy/churn/service.yaml"], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    capsys.readouterr()
    assert main(["render", "k8s", f"churn:{first.version}", "deploy/churn"]) == 0
    assert {p.name: p.read_bytes() for p in (folder / "deploy" / "churn").iterdir()} == rendered  # same bytes

    ws = Workspace.open(config)
    _server, follower, sock = build_service(ws, f"churn:{first.version}", port=0, sha256=first.artifact_sha256)
    sock.close()
    config.write_text(config.read_text().replace("seed = 7", "seed = 8"))
    second = loop_once(config)  # a canary of v2 starts next to production
    assert second.version == first.version + 1 and ws.registry.aliases("churn").get("canary") == second.version
    follower.sync()
    assert dict(follower.core.routing.weights) == {first.version: 1.0}  # pinned: no alias moves it
    with pytest.raises(ConfigError, match="refusing to serve"):
        build_service(ws, f"churn:{first.version}", port=0, sha256="0" * 64)
    refused = subprocess.run([sys.executable, "-m", "loopml.cli", "serve", f"churn:{first.version}", "--port", "0",
                              "--sha256", "f" * 64], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "refusing to serve" in refused.stderr


def test_the_argocd_application_points_at_a_rendered_folder() -> None:
    app = yaml.safe_load((ROOT / "deployments" / "argocd" / "application.yaml").read_text())
    assert app["kind"] == "Application" and app["apiVersion"] == "argoproj.io/v1alpha1"
    assert app["spec"]["source"]["path"] == "deploy/churn" and app["spec"]["syncPolicy"]["automated"]["prune"]
