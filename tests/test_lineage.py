"""`loopml lineage`: what went into a model version, and which versions a dataset version went into."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from loop_steps import loop_once

from loopml.context import Workspace
from loopml.examples import churn
from loopml.lineage import dataset_impact, model_lineage

pytestmark = [pytest.mark.training, pytest.mark.slow, pytest.mark.in_order]


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """v1 trained and promoted; then corrected labels: v2 trained on them, now the canary."""
    folder = tmp_path_factory.mktemp("lineage")
    config = churn.init_project(folder, n_customers=600)
    first = loop_once(config)
    labels = folder / "data" / "labels.csv"
    rows = labels.read_text().splitlines()
    labels.write_text("\n".join(rows[:-40]) + "\n")  # a corrected export: 40 bad labels dropped
    second = loop_once(config)
    return config, first, second


def test_a_model_version_names_its_source_files_data_code_gates_and_windows(two_versions) -> None:
    config, first, _ = two_versions
    lin = model_lineage(Workspace.open(config), first.name, first.version)
    assert lin.aliases == ("production",) and lin.served[0].alias == "production" and lin.served[0].until is None
    files = {s.path.rsplit("/", 1)[-1]: s.sha256 for d in lin.datasets for s in d.sources}
    assert set(files) == {"labels.csv", "activity.csv"}
    on_disk = hashlib.sha256((config.parent / "data" / "activity.csv").read_bytes()).hexdigest()
    assert files["activity.csv"] == on_disk  # the activity export did not change since
    assert {e.action for e in lin.history} >= {"register", "promote"} and lin.gates
    assert lin.run_id == first.run_id and lin.validation_report == first.lineage["validation_report"]


def test_a_bad_labels_version_finds_the_live_model_and_the_clean_fallback(two_versions) -> None:
    config, first, second = two_versions
    ws = Workspace.open(config)
    impact = dataset_impact(ws, first.lineage["datasets"]["labels"])
    assert [m.ref for m in impact.models] == [first.ref] and impact.models[0].live
    assert second.status == "approved"
    assert any(f"loopml models promote {first.name}:{second.version} --alias production --expected "
               f"{first.version}" in a for a in impact.advice), impact.advice


def test_a_dataset_shared_by_every_version_has_no_clean_fallback(two_versions) -> None:
    config, first, second = two_versions
    impact = dataset_impact(Workspace.open(config), first.lineage["datasets"]["features"])
    assert {m.ref for m in impact.models} == {first.ref, second.ref}
    assert all(m.live for m in impact.models)
    assert any("no approved version of churn was built without it" in a for a in impact.advice)


def test_the_command_gives_a_tree_json_and_an_html_graph(two_versions, tmp_path) -> None:
    config, first, _ = two_versions
    cli = [sys.executable, "-m", "loopml.cli", "lineage", "--config", str(config)]
    wide = {**os.environ, "COLUMNS": "250"}  # a narrow terminal wraps long paths onto the next line
    tree = subprocess.run([*cli, f"{first.name}:{first.version}", "--html", str(tmp_path / "l.html")],
                          capture_output=True, text=True, check=True, env=wide).stdout
    assert "labels.csv sha256" in tree and "@production" in tree
    page = (tmp_path / "l.html").read_text()
    assert "data:image/png;base64," in page and first.ref in page
    as_json = json.loads(subprocess.run([*cli, f"{first.name}@production", "--json"], capture_output=True,
                                        text=True, check=True).stdout)
    assert as_json["ref"] == first.ref and as_json["aliases"] == ["production"]
    impact = subprocess.run([*cli, first.lineage["datasets"]["labels"], "--impact"], capture_output=True,
                            text=True, check=True).stdout
    assert first.ref in impact and "is live as production" in impact
