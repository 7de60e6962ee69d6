"""Prefect 3 flows for the loopml loop. They orchestrate only: logic lives in ``loopml.loop``.

Run ad hoc (``from flows.pipeline import pipeline; pipeline()``), from the CLI (``loopml run``),
or as deployments (``deployments/prefect.yaml``).
"""
