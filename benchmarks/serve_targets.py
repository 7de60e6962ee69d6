"""Servers for bench_serving.py, each in a process of its own: ``python serve_targets.py KIND ARTIFACT PORT``.

KIND: ``loopml`` (loopml's server, prediction log on), ``loopml-nolog`` (log off), ``plain`` (a
minimal Starlette app on uvicorn scoring the same artifact with the same loader, no checks, no
metrics, no log: the floor an ASGI app can reach).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    kind, artifact, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    t_imports = time.perf_counter()
    import prometheus_client  # noqa: F401 - every import the server needs is timed apart from start-up
    import starlette.applications  # noqa: F401
    import torch
    import torch._export.serde.serialize
    import torch.export  # noqa: F401
    import uvicorn

    from loopml.artifacts import Predictor
    from loopml.serving.runtime import ModelServer
    from loopml.serving.transport import bind

    ready_imports = time.perf_counter() - t_imports
    t0 = time.perf_counter()
    predictor = Predictor.from_bytes(artifact.read_bytes())
    if kind.startswith("loopml"):
        log_dir = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_LOG_DIR"))) if kind == "loopml" else None
        server = ModelServer("bench", port=port, log_dir=log_dir)
        server.add_version(1, predictor)
        server.start()
        print(f"READY imports={ready_imports:.3f}s start={time.perf_counter() - t0:.3f}s", flush=True)
        while True:
            time.sleep(3600)
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"version": 1, "predictions": predictor.predict_rows(body["rows"]).tolist()})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    sock = bind("127.0.0.1", port)
    print(f"READY imports={ready_imports:.3f}s start={time.perf_counter() - t0:.3f}s", flush=True)
    uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning", loop="asyncio")).run(sockets=[sock])


if __name__ == "__main__":
    main()
