"""A realistic, seeded example: customer churn with point-in-time features and drift.

``activity.csv`` holds monthly snapshots per customer (entity ``customer_id``, timestamp
``event_timestamp``); ``labels.csv`` says whether a customer churned as of ``label_timestamp``,
with the sensitive attribute ``senior`` for fairness slices. The same customers also have a spend
for the next month (``spend_next``, the regression example) and the plan they pick (``plan``: basic,
plus or premium, the multiclass example). Snapshots taken *after* a churn show
a spike in support calls: a model that leaked future rows would look suspiciously good.

``drift > 0`` shifts prices up, moves customers to monthly contracts and changes how price drives
churn, so a model trained on the old data degrades and retraining on fresh data helps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from loopml.features import FeatureView, point_in_time_join

START = datetime(2025, 1, 1, tzinfo=UTC)
REGIONS = ("north", "south", "east", "west")
CONTRACTS = ("month", "annual", "two_year")
SNAPSHOTS = 4
PLANS = ("basic", "plus", "premium")


@dataclass(frozen=True)
class ChurnData:
    activity: object  # pandas.DataFrame
    labels: object  # pandas.DataFrame


def generate(n_customers: int = 4000, *, seed: int = 0, drift: float = 0.0,
             start: datetime = START, id_offset: int = 0) -> ChurnData:
    """Generate activity snapshots and labels. Same arguments, same rows."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_customers
    ids = np.arange(id_offset, id_offset + n)
    region = rng.choice(REGIONS, size=n)
    senior = rng.random(n) < 0.25
    contract_p = np.array([0.45 + 0.4 * drift, 0.35 - 0.2 * drift, 0.20 - 0.2 * drift])
    contract_p = np.clip(contract_p, 0.02, None)
    contract = rng.choice(CONTRACTS, size=n, p=contract_p / contract_p.sum())
    base_charge = rng.normal(65 + 20 * drift, 18, size=n).clip(15, 200)
    tenure0 = rng.integers(1, 72, size=n)

    rows = []
    snap_times = []
    for k in range(SNAPSHOTS):
        jitter = rng.integers(0, 6 * 3600, size=n)
        t = np.array([start + timedelta(days=30 * k, seconds=int(j)) for j in jitter])
        snap_times.append(t)
        calls = rng.poisson(0.8 + 0.6 * (contract == "month") + 0.4 * senior, size=n)
        rows.append(pd.DataFrame({
            "customer_id": ids, "event_timestamp": t,
            "tenure_months": tenure0 + k, "monthly_charges": (base_charge + rng.normal(0, 3, n)).round(2),
            "support_calls": calls, "contract": contract, "region": region,
        }))
    # Label time falls between the 2nd and the last snapshot.
    label_offset = rng.integers(31 * 24, 89 * 24, size=n)
    label_ts = np.array([start + timedelta(hours=int(h)) for h in label_offset])
    known_idx = np.clip(((label_ts - start) // timedelta(days=30)).astype(int), 0, SNAPSHOTS - 1)
    frames = rows
    charges_now = np.array([frames[known_idx[i]]["monthly_charges"].iat[i] for i in range(n)])
    calls_now = np.array([frames[known_idx[i]]["support_calls"].iat[i] for i in range(n)])
    tenure_now = tenure0 + known_idx
    price_weight = 0.035 + 0.025 * drift
    logit = (-1.6 + price_weight * (charges_now - 65) + 0.45 * calls_now - 0.03 * tenure_now
             + 1.1 * (contract == "month") - 0.8 * (contract == "two_year")
             + 0.25 * (region == "south") + 0.15 * senior)
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    # Other outcomes of the same customers, for the regression and multiclass examples.
    spend_next = (charges_now * (1 + (0.004 + 0.006 * drift) * tenure_now) + (4 + 3 * drift) * calls_now
                  + 12 * (contract == "two_year") + rng.normal(0, 6, n)).round(2)
    plan_logits = np.stack([np.zeros(n),
                            0.04 * (charges_now - 60) + 0.8 * (contract == "annual") + 0.02 * tenure_now,
                            0.07 * (charges_now - 75) + 1.6 * (contract == "two_year") - 0.3 * calls_now
                            + drift * 0.03 * (charges_now - 70)], axis=1)
    plan_p = np.exp(plan_logits - plan_logits.max(axis=1, keepdims=True))
    plan_p /= plan_p.sum(axis=1, keepdims=True)
    plan = np.array(PLANS)[[rng.choice(3, p=row) for row in plan_p]]
    # A churner leaves: no snapshots after the label time. (An earlier generator gave those
    # snapshots +6 support calls as leakage bait; serving by entity id then read them as the
    # "latest" features and the example alarmed drift on its own artefact.) A join that leaks
    # future rows is still caught: tenure grows by one each snapshot.
    for k in range(SNAPSHOTS):
        after = (snap_times[k] > label_ts) & churned
        frames[k] = frames[k].loc[~after]
    activity = pd.concat(frames, ignore_index=True).sort_values(["event_timestamp", "customer_id"])
    labels = pd.DataFrame({"customer_id": ids, "label_timestamp": label_ts,
                           "churned": churned.astype(int), "spend_next": spend_next, "plan": plan,
                           "senior": np.where(senior, "yes", "no")})
    return ChurnData(activity.reset_index(drop=True), labels)


def request_rows(data: ChurnData, features: tuple[str, ...]) -> list[dict]:
    """What a client sends at prediction time: each customer's features as known at its label
    time (the same point in time training used), as JSON-ready rows."""
    view = FeatureView("activity", "customer_id", "event_timestamp",
                       ("tenure_months", "monthly_charges", "support_calls"), ("contract", "region"))
    joined = point_in_time_join(data.labels, "label_timestamp", data.activity, view)
    joined = joined[joined["activity__event_timestamp"].notna()]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in joined[list(features)].to_dict("records")]


def write(data: ChurnData, folder: Path) -> tuple[Path, Path]:
    """Write ``activity.csv`` and ``labels.csv`` (ISO 8601 UTC timestamps)."""
    folder.mkdir(parents=True, exist_ok=True)
    activity, labels = folder / "activity.csv", folder / "labels.csv"
    act = data.activity.copy()
    act["event_timestamp"] = act["event_timestamp"].map(lambda t: t.isoformat())
    lab = data.labels.copy()
    lab["label_timestamp"] = lab["label_timestamp"].map(lambda t: t.isoformat())
    act.to_csv(activity, index=False)
    lab.to_csv(labels, index=False)
    return activity, labels


EXAMPLES = ("churn", "regression", "multiclass", "custom-model")

_COMMON = """\
# loopml example project: {title}. Every key is documented in docs/configuration.md.
project = "{name}-example"
home = ".loopml"
{plugins}
[storage]
uri = "artifacts"            # under home; or s3://bucket/prefix with the s3 plugin

[trackers.local]

[monitors.drift-log]

[datasets.activity]
source = "data/activity.csv"
[datasets.activity.columns]
customer_id = {{ type = "int", nullable = false }}
event_timestamp = {{ type = "timestamp", nullable = false }}
tenure_months = {{ type = "int", min = 0 }}
monthly_charges = {{ type = "float", min = 0 }}
support_calls = {{ type = "int", min = 0 }}
contract = {{ type = "category", allowed = ["month", "annual", "two_year"] }}
region = {{ type = "category" }}

[datasets.labels]
source = "data/labels.csv"
[datasets.labels.columns]
customer_id = {{ type = "int", nullable = false }}
label_timestamp = {{ type = "timestamp", nullable = false }}
churned = {{ type = "int", nullable = false, min = 0, max = 1 }}
spend_next = {{ type = "float", nullable = false }}
plan = {{ type = "category", allowed = ["basic", "plus", "premium"] }}
senior = {{ type = "category", allowed = ["yes", "no"] }}

[pipeline]
model_name = "{model}"
task = "{task}"
entity = "customer_id"
labels_dataset = "labels"
label = "{label}"
label_timestamp = "label_timestamp"
sensitive_attribute = "senior"

[pipeline.features]
view = "customer_activity"
dataset = "activity"
timestamp = "event_timestamp"
ttl_days = 45
numeric = ["tenure_months", "monthly_charges", "support_calls"]
categorical = ["contract", "region"]

[pipeline.model]
{model_table}
[pipeline.training]
seed = 7

[pipeline.gates]
{thresholds}
{fairness_key} = {fairness}
latency_p99_ms = 50.0
max_latency_ratio = 3.0
{checks}
[pipeline.drift]
alpha = 0.01
min_samples = 200

[profiles.ci.pipeline.model.options]
epochs = 10
"""

FAIR_REGRESSION = """0.25
# A regression's rmse is in the target's units: the gap between slices is judged as a share of the
# holdout's rmse (max_relative_fairness_gap, default 0.25), which fits any scale."""
FAIR_REGRESSION_KEY = "max_relative_fairness_gap"

FAIR_BINARY = """0.12
# Seniors churn about twice as often in this data, so even a fair model selects them about twice as
# often: the four-fifths rule (0.8) would flag the base rate, not the model. 0.3 still refuses a model
# that selects one group eight times as often as the other.
min_selection_rate_ratio = 0.3"""

_EXAMPLES = {
    "churn": dict(title="customer churn (binary)", model="churn", task="binary", label="churned",
                  model_table='trainer = "mlp"\noptions = { epochs = 25, hidden_units = 32 }\n',
                  thresholds="thresholds = { auc = 0.70 }\nregression_margin = 0.01", fairness=FAIR_BINARY),
    "regression": dict(title="next month's spend (regression)", model="spend", task="regression",
                       label="spend_next",
                       model_table='trainer = "mlp"\noptions = { epochs = 25, hidden_units = 32, loss = "huber" }\n',
                       thresholds="thresholds = { r2 = 0.5, rmse = 20.0 }\nregression_margin = 0.5",
                       fairness=FAIR_REGRESSION),
    "multiclass": dict(title="plan choice (multiclass)", model="plan", task="multiclass", label="plan",
                       model_table='trainer = "mlp"\noptions = { epochs = 25, hidden_units = 32 }\n',
                       thresholds="thresholds = { macro_auc = 0.65 }\nregression_margin = 0.01",
                       fairness="0.15"),
    "custom-model": dict(title="customer churn with a team's own residual network", model="churn",
                         task="binary", label="churned", plugins='plugins = ["churn_gates"]   # churn_gates.py\n',
                         model_table=('trainer = "torch-module"   # churn_models.py: build(signature)\n'
                                      'options = { module = "churn_models:build", kwargs = { width = 32, blocks = 2 }, '
                                      'epochs = 25, learning_rate = 0.005, early_stopping_patience = 5 }\n'),
                         thresholds="thresholds = { auc = 0.70 }\nregression_margin = 0.01", fairness=FAIR_BINARY,
                         checks="\n[pipeline.gates.checks.min-slice-metric]   # from churn_gates.py\nminimum = 0.6\n"),
}

CUSTOM_MODEL = '''"""A team's own model for loopml's torch-module trainer: a small residual network.

loopml calls build(signature, **kwargs) and trains what it returns. forward(numeric, codes) gets
standardised numerics [n, k] and category codes [n, c] (0 = unknown) and returns logits.
"""

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualNet(nn.Module):
    def __init__(self, signature, width: int, blocks: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(size, 4) for size in signature.cardinalities)
        self.stem = nn.Linear(len(signature.numeric) + 4 * len(signature.cardinalities), width)
        self.blocks = nn.Sequential(*(Block(width) for _ in range(blocks)))
        self.head = nn.Linear(width, signature.n_outputs)

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        parts = [numeric] + [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]
        return self.head(self.blocks(self.stem(torch.cat(parts, dim=1))))


def build(signature, width: int = 32, blocks: int = 2) -> nn.Module:
    return ResidualNet(signature, width, blocks)
'''

CUSTOM_GATE = '''"""A team's own gate check, registered with loopml_gate_checks and turned on in loopml.toml:

[pipeline.gates.checks.min-slice-metric]
minimum = 0.6
"""

from pydantic import BaseModel, ConfigDict

from loopml.plugins import hookimpl
from loopml.records import GateCheck
from loopml.specs import BackendSpec


class MinSliceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    minimum: float


def make_check(options: MinSliceOptions, ctx):
    def check(gate) -> GateCheck:
        from loopml.tasks import primary_metric

        metric = primary_metric(gate.task).name
        values = {name: s[metric] for name, s in gate.slices.items() if s[metric] == s[metric]}
        worst = min(values, key=values.get) if values else None
        ok = worst is None or values[worst] >= options.minimum
        reason = ("no slices to check" if worst is None else
                  f"lowest slice {worst}: {metric} {values[worst]:.3f} "
                  + (">=" if ok else "<") + f" {options.minimum}")
        return GateCheck("min-slice-metric", values.get(worst) if worst else None, options.minimum, ok, reason)

    return check


@hookimpl
def loopml_gate_checks():
    return [BackendSpec("min-slice-metric", make_check, MinSliceOptions,
                        "every slice of the sensitive attribute reaches a minimum primary metric")]
'''


def config_text(example: str = "churn") -> str:
    """The ``loopml.toml`` of an example project."""
    if example not in _EXAMPLES:
        raise ValueError(f"unknown example {example!r}; choose one of: {', '.join(EXAMPLES)}")
    values = {"plugins": "", "checks": "", "fairness_key": "max_fairness_gap", **_EXAMPLES[example], "name": example}
    if values["fairness"] is FAIR_REGRESSION:
        values["fairness_key"] = FAIR_REGRESSION_KEY
    return _COMMON.format(**values)


CONFIG = config_text("churn")


def init_project(folder: Path, *, n_customers: int = 4000, seed: int = 0, example: str = "churn") -> Path:
    """Create an example project: ``loopml.toml``, generated data under ``data/`` and, for
    ``custom-model``, the team's model module and gate plugin."""
    text = config_text(example)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loopml.toml").write_text(text)
    ignore = folder / ".gitignore"
    if not ignore.exists():  # loopml's state is not source: a commit of the project stays clean
        ignore.write_text(".loopml/\n__pycache__/\n")
    if example == "custom-model":
        (folder / "churn_models.py").write_text(CUSTOM_MODEL)
        (folder / "churn_gates.py").write_text(CUSTOM_GATE)
    write(generate(n_customers, seed=seed), folder / "data")
    return folder / "loopml.toml"
