"""Where the partitioned steps run: Prefect's thread pool in one process (the default), or a Dask
cluster through Prefect's Dask task runner (``prefect-dask``, the ``dask`` extra).

``dask_task_runner()`` builds a runner that connects, when the flow starts, to the cluster at
``LOOPML_DASK_ADDRESS`` (``tcp://scheduler:8786``; on Kubernetes, the scheduler service that
dask-kubernetes' ``KubeCluster`` or the Dask Helm chart creates) or, without it, starts a
``distributed.LocalCluster`` of single-threaded worker processes on 127.0.0.1 for the life of the
flow run. Nothing is started or read when it is built, so building it at import is free.
"""

from __future__ import annotations

import os
from typing import Any

ADDRESS_ENV = "LOOPML_DASK_ADDRESS"
WORKERS_ENV = "LOOPML_DASK_WORKERS"


def dask_task_runner(workers: int | None = None) -> Any:
    """A ``prefect_dask.DaskTaskRunner`` for ``flow.with_options(task_runner=...)``."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ImportError("the Dask task runner needs the 'dask' extra: pip install 'loopml[dask]'") from None

    class LoopmlDaskTaskRunner(DaskTaskRunner):
        """Resolves the cluster when the flow run starts, not when the flow module is imported."""

        def __enter__(self):  # type: ignore[no-untyped-def]
            if not self.address and not self._cluster:
                self.address = os.environ.get(ADDRESS_ENV) or None
            if not self.address:
                count = workers or int(os.environ.get(WORKERS_ENV) or os.cpu_count() or 1)
                self.cluster_kwargs = {"n_workers": count, "threads_per_worker": 1, "processes": True,
                                       "host": "127.0.0.1", "dashboard_address": None, **self.cluster_kwargs}
            return super().__enter__()

    return LoopmlDaskTaskRunner()


def on_dask(flow: Any, name: str) -> Any:
    """``flow`` as flow ``name`` on :func:`dask_task_runner`, or None without the dask extra (a flow
    module exposes it as ``<flow>_on_dask`` for deployments)."""
    try:
        return flow.with_options(name=name, task_runner=dask_task_runner())
    except ImportError:
        return None
