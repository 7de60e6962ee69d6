"""`loopml render k8s`: GitOps manifests pinned to one model version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopml.cli.common import ConfigOpt, JsonOpt, ProfileOpt, app, out, print_json, workspace

render_app = typer.Typer(no_args_is_help=True, help="Write deployment manifests pinned to one model version.")
app.add_typer(render_app, name="render")


@render_app.command("k8s")
def render_k8s(target: Annotated[str, typer.Argument(help="NAME@ALIAS (resolved now) or NAME:VERSION.")],
               folder: Annotated[Path, typer.Argument(help="Folder for the manifests (commit it).")],
               image: Annotated[str, typer.Option(help="The loopml image.")] = "ghcr.io/loopml/loopml:0.1.0",
               replicas: Annotated[int, typer.Option(min=1)] = 2,
               storage_uri: Annotated[str | None, typer.Option(help="LOOPML__STORAGE__URI for the pods "
                                                               "(e.g. s3://bucket/loopml).")] = None,
               config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """Write a Deployment pinned to the version and artifact sha256 the target names now, a Service and
    a kustomization; the server refuses any other artifact. Point ArgoCD at the folder."""
    from loopml.cli.models_cmd import _parse_model_ref
    from loopml.gitops import render

    name, version, alias = _parse_model_ref(target)
    model = workspace(config, profile).registry.get(name, version, alias=alias)
    written = render(model, folder, image=image, replicas=replicas, storage_uri=storage_uri)
    if as_json:
        print_json({"model": model.ref, "sha256": model.artifact_sha256, "files": [str(p) for p in written]})
        return
    out.print(f"{model.ref} (sha256 {model.artifact_sha256[:12]}…) -> " + ", ".join(str(p) for p in written),
              soft_wrap=True, highlight=False)
