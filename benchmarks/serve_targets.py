"""Peers for bench_serving.py, each in a process of its own: ``python serve_targets.py KIND PATH PORT``.

KIND ``plain``: a minimal Starlette app on uvicorn scoring the artifact at PATH with loopml's loader
and nothing else (no checks, metrics, log or auth): the floor an ASGI app can reach.
KIND ``loopml-nolog``: exactly what ``loopml serve`` builds for the project whose loopml.toml is at
PATH, with the prediction log taken out: the log's cost is the difference to ``loopml serve``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def plain(artifact: Path, port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from loopml.artifacts import Predictor
    from loopml.serving.transport import bind

    predictor = Predictor.from_bytes(artifact.read_bytes())

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"version": 1, "predictions": predictor.predict_rows(body["rows"]).tolist()})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    sock = bind("127.0.0.1", port)
    print("READY", flush=True)
    uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning", loop="asyncio")).run(sockets=[sock])


def loopml_without_log(config: Path, port: int) -> None:
    from loopml.context import Workspace
    from loopml.serving.follower import build_service, dedicate_process

    ws = Workspace.open(config)
    server, follower, sock = build_service(ws, "churn@production", port=port)
    follower.core.log_writer = None
    dedicate_process(ws)  # as `loopml serve` does
    print("READY", flush=True)
    server.run(sockets=[sock])


def main() -> None:
    kind, path, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    {"plain": plain, "loopml-nolog": loopml_without_log}[kind](path, port)


if __name__ == "__main__":
    main()
