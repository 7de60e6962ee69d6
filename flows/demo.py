"""The whole loop on embedded defaults, as one command: ``loopml demo``.

Creates an example churn project, runs the pipeline, serves the model, sends traffic, injects
drift, detects it, retrains on fresh data, validates against production, and promotes the new
model while traffic keeps flowing. Prints a summary with the paths of the reports.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger

from flows.common import runs_stages, workspace
from flows.monitor import monitor
from flows.pipeline import pipeline
from loopml.capabilities import TokenServing
from loopml.examples import churn
from loopml.stages.project import pipeline_config, production_model, view_of
from loopml.traffic import TrafficGenerator

DEMO_MARKER = ".loopml-demo-project"


@dataclass
class DemoSummary:
    project: Path
    steps: list[tuple[str, str]] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)

    def add(self, step: str, outcome: str) -> None:
        self.steps.append((step, outcome))


@flow(name="loopml-demo", log_prints=True)
@runs_stages
def demo(folder: str = "loopml-demo", n_customers: int = 4000, requests: int = 400,
         profile: str | None = None, example: str = "churn") -> DemoSummary:
    """The whole loop on one of the example projects (churn, regression, multiclass, custom-model)."""
    logger = get_run_logger()
    project = Path(folder).resolve()
    marker = project / DEMO_MARKER
    if marker.is_file():  # a project an earlier demo made: start it over, so the story repeats
        shutil.rmtree(project)
    if not (project / "loopml.toml").is_file():
        churn.init_project(project, n_customers=n_customers, seed=0, example=example)
        marker.write_text("created by `loopml demo`; the next demo run deletes and recreates this folder\n")
        logger.info("created example project in %s", project)
    config = str(project / "loopml.toml")
    summary = DemoSummary(project)
    ws = workspace(config, profile)
    features = view_of(ws).features

    first = pipeline(config=config, profile=profile, await_canary=True)
    summary.add("train + validate + register", f"{first.model} {first.status}"
                + (" -> production" if first.promoted else "") + (" (training skipped: cached)"
                                                                  if first.skipped_training else ""))
    if first.report_path:
        summary.reports.append(first.report_path)
    url = ws.serving.status()["predict_url"]
    token_serving = ws.ability(ws.serving, TokenServing)  # TorchServe's token auth
    token = token_serving.inference_token if token_serving is not None else None
    summary.add(f"serve ({ws.serving.name})", url)

    def traffic_then_drift_check(label: str, data: churn.ChurnData):
        traffic = TrafficGenerator(url, churn.request_rows(data, features), token=token)
        since = time.time()
        traffic.send(requests)
        summary.add(f"traffic, {label}", f"{traffic.statuses[200]}/{traffic.sent} answered")
        report, path = monitor(since=since, config=config, profile=profile)
        summary.reports.append(path)
        summary.add("drift check", report.reason)
        return report

    traffic_then_drift_check("same distribution", churn.generate(1000, seed=11))
    fresh = churn.generate(n_customers, seed=22, drift=1.0, id_offset=1_000_000)
    drift = traffic_then_drift_check("drifted inputs", fresh)

    if drift.drift_detected:
        churn.write(fresh, project / "data")  # the fresh export that retraining reads
        during = TrafficGenerator(url, churn.request_rows(fresh, features), token=token).start()
        second = pipeline(config=config, profile=profile, await_canary=True)
        during.stop()
        summary.add("retrain on fresh data", f"{second.model} {second.status}"
                    + (" -> production" if second.promoted else
                       f" (failed: {', '.join(second.failed_checks) or 'canary'})")
                    + (f" after a canary ({second.canary})" if second.canary else ""))
        verdict_reports = sorted((project / ".loopml" / "reports").glob("v[0-9]*.html"))
        if second.canary:
            last = production_model(ws, pipeline_config(ws).model_name)
            history = [e for e in ws.registry.history(last.name) if e.actor == "loopml-canary"]
            if history:
                summary.add("canary verdict", history[-1].reason[:300])
        if second.report_path:
            summary.reports.append(second.report_path)
        summary.reports.extend(str(p) for p in verdict_reports)
        summary.add("requests during the swap", f"{during.sent} sent, {during.failed} failed, "
                    f"by version {dict(sorted(during.versions.items()))}"
                    + (f"; first error: {during.errors[0][:120]}" if during.errors else ""))
    prod = production_model(ws, pipeline_config(ws).model_name)
    summary.add("production now", prod.ref if prod else "none")
    if prod is not None:
        entity = pipeline_config(ws).entity
        candidates = [int(i) for i in fresh.labels[entity].head(200)]
        online = ws.feature_store.online_features(view_of(ws).name, candidates)
        # a customer still active (churners left; their features expired with the view's ttl)
        some_id = next((i for i, ok in zip(candidates, online[features[0]].notna(), strict=True) if ok),
                       candidates[0])
        answer = ws.serving.predict([{entity: some_id}]) if ws.serving.name == "builtin" else None
        if answer:
            value = answer["predictions"][0]
            summary.add("predict by entity id (online features)",
                        f"{entity}={some_id}: {value if isinstance(value, str) else f'{value:.3f}'} "
                        f"from v{answer['version']}")
    ws.serving.undeploy()  # stop serving: the demo is over
    return summary
