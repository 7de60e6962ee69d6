"""GitOps: Kubernetes manifests that name one model version, so a model change is a commit.

``loopml render k8s churn@production OUT`` resolves the alias once and writes a Deployment whose
server is pinned to that version and its artifact's sha256 (``loopml serve churn:3 --sha256 …``:
the server refuses any other artifact and follows no alias), a Service and a kustomization. The
version and the sha256 are also labels and annotations, so ``kubectl get`` and ArgoCD show which
model runs. The same version renders to the same bytes; a rollback is a ``git revert``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loopml.records import ModelVersion

DEFAULT_IMAGE = "ghcr.io/loopml/loopml:0.1.0"


def _labels(model: ModelVersion) -> dict[str, str]:
    return {"app.kubernetes.io/name": "loopml-serve", "loopml.dev/model": model.name}


def manifests(model: ModelVersion, *, image: str = DEFAULT_IMAGE, replicas: int = 2,
              config: str = "/project/loopml.toml", storage_uri: str | None = None) -> dict[str, Any]:
    """The Deployment, Service and kustomization of ``model``, as objects (file name -> object)."""
    name = f"loopml-serve-{model.name}"
    pin = {"loopml.dev/model-version": str(model.version), "loopml.dev/artifact-sha256": model.artifact_sha256}
    env = [{"name": "LOOPML_SERVE_TOKEN", "valueFrom": {"secretKeyRef": {"name": "loopml-serve", "key": "token"}}}]
    if storage_uri:
        env.append({"name": "LOOPML__STORAGE__URI", "value": storage_uri})
    container = {
        "name": "serve", "image": image,
        "args": [f"{model.name}:{model.version}", "--sha256", model.artifact_sha256, "--config", config],
        "ports": [{"name": "http", "containerPort": 8080}], "env": env,
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5,
                           "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "initialDelaySeconds": 10,
                          "periodSeconds": 10},
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "project", "mountPath": "/project", "readOnly": True},
                         {"name": "work", "mountPath": "/project/.loopml"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {**_labels(model), "loopml.dev/model-version": str(model.version)},
                     "annotations": pin},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": _labels(model)},
            "template": {
                "metadata": {"labels": {**_labels(model), "loopml.dev/model-version": str(model.version)},
                             "annotations": dict(pin)},
                "spec": {"terminationGracePeriodSeconds": 45,
                         "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                         "containers": [container],
                         "volumes": [{"name": "project", "configMap": {"name": "loopml-project"}},
                                     {"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": _labels(model)},
               "spec": {"selector": _labels(model),
                        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": ["deployment.yaml", "service.yaml"]}
    return {"deployment.yaml": deployment, "service.yaml": service, "kustomization.yaml": kustomization}


def render(model: ModelVersion, folder: Path, **options: Any) -> list[Path]:
    """Write the manifests of ``model`` into ``folder``; the same version gives the same bytes."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    header = (f"# Rendered by `loopml render k8s` from {model.ref} (artifact sha256 {model.artifact_sha256}).\n"
              "# Commit this folder: a model change is a diff, a rollback a revert.\n")
    written = []
    for file, body in manifests(model, **options).items():
        path = folder / file
        path.write_text(header + yaml.safe_dump(body, sort_keys=False, width=120), encoding="utf-8")
        written.append(path)
    return written
