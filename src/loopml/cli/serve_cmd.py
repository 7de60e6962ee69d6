"""`loopml serve NAME@ALIAS`: serve a model alias until stopped, following the registry."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from loopml.cli.common import (
    ConfigOpt,
    ProfileOpt,
    app,
    workspace,
)


@app.command("serve")
def serve(target: Annotated[str, typer.Argument(help="NAME@ALIAS to follow (churn@production), or NAME:VERSION "
                                                    "to pin (churn:3).")],
          host: Annotated[str | None, typer.Option(help="Bind address (default \\[serving.options] host, "
                                                        "127.0.0.1).")] = None,
          port: Annotated[int | None, typer.Option(help="Port (default \\[serving.options] port, else 8080; "
                                                        "0: a free one).")] = None,
          canary_weight: Annotated[float | None, typer.Option(help="Share for the version under alias "
                                                                   "'canary'.")] = None,
          poll_seconds: Annotated[float | None, typer.Option(help="How often to read the registry.")] = None,
          insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without a "
                                                 "token (something in front must authenticate).")] = False,
          wait: Annotated[bool, typer.Option("--wait", help="Start even if the alias names no version yet; "
                                             "serve the first one it gets (default: exit 2).")] = False,
          sha256: Annotated[str | None, typer.Option(help="With NAME:VERSION: serve it only if its artifact has "
                                                     "this sha256 (GitOps: `loopml render k8s` writes both).")] = None,
          config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Serve a model alias until stopped, following promotions and rollbacks (POST /predict, OIP v2, /metrics);
    or one pinned version (NAME:VERSION, with --sha256), which nothing in the registry moves.

    The token clients must send comes from \\[serving.options] token or $LOOPML_SERVE_TOKEN."""
    from loopml.serving import follower

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("loopml").setLevel(logging.INFO)  # start-up and follow lines are news, not warnings
    follower.serve(workspace(config, profile), target, host=host, port=port, canary_weight=canary_weight,
                   poll_seconds=poll_seconds, insecure=insecure, wait=wait, sha256=sha256)
