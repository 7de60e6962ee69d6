"""The container and Kubernetes manifests, validated offline (no Docker engine or cluster here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.subprocess
def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    manifest = ROOT / "deployments" / "kubernetes" / "loopml-serve.yaml"
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0", str(manifest)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(manifest.read_text())]
    assert kinds == ["Deployment", "Service", "HorizontalPodAutoscaler"]


def test_probes_use_the_open_inference_protocol_health_routes() -> None:
    deployment = next(yaml.safe_load_all((ROOT / "deployments" / "kubernetes" / "loopml-serve.yaml").read_text()))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["args"][0] == "churn@production"
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 30  # > the drain time


def test_kserve_inference_service_runs_loopml_serve_with_v2_probes() -> None:
    isvc = yaml.safe_load((ROOT / "deployments" / "kserve" / "inferenceservice.yaml").read_text())
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container" and container["args"][0] == "churn@production"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_kserve_mlflow_variant_points_at_loopmls_export_layout() -> None:
    from types import SimpleNamespace

    from loopml.exports import export_path

    isvc = yaml.safe_load((ROOT / "deployments" / "kserve" / "inferenceservice-mlflow.yaml").read_text())
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "mlflow"
    assert model["storageUri"].endswith("/exports/" + export_path(SimpleNamespace(name="churn", version=3)))


def test_dockerfile_entrypoint_is_loopml_serve_as_a_non_root_user() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert 'ENTRYPOINT ["loopml", "serve", "--host", "0.0.0.0"]' in lines  # port: the default, 8080
    assert any(line.startswith("USER ") and line != "USER root" for line in lines)
    assert any('"torch==2.13.0"' in line for line in lines)
    assert any(line.startswith("EXPOSE 8080") for line in lines)
    # the HEALTHCHECK hits the same route the server answers
    from loopml.serving.app import build_app
    from loopml.serving.core import ServingCore

    paths = {route.path for route in build_app(ServingCore("m")).routes}
    assert "/v2/health/live" in paths and "/v2/health/ready" in paths
