"""A realistic, seeded example: customer churn with point-in-time features and drift.

``activity.csv`` holds monthly snapshots per customer (entity ``customer_id``, timestamp
``event_timestamp``); ``labels.csv`` says whether a customer churned as of ``label_timestamp``,
with the sensitive attribute ``senior`` for fairness slices. Snapshots taken *after* a churn show
a spike in support calls: a model that leaked future rows would look suspiciously good.

``drift > 0`` shifts prices up, moves customers to monthly contracts and changes how price drives
churn, so a model trained on the old data degrades and retraining on fresh data helps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

START = datetime(2025, 1, 1, tzinfo=UTC)
REGIONS = ("north", "south", "east", "west")
CONTRACTS = ("month", "annual", "two_year")
SNAPSHOTS = 4


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
    # Leakage bait: snapshots after the label time of a churner show many support calls.
    for k in range(SNAPSHOTS):
        after = (snap_times[k] > label_ts) & churned
        frames[k].loc[after, "support_calls"] += 6
    activity = pd.concat(frames, ignore_index=True).sort_values(["event_timestamp", "customer_id"])
    labels = pd.DataFrame({"customer_id": ids, "label_timestamp": label_ts,
                           "churned": churned.astype(int), "senior": np.where(senior, "yes", "no")})
    return ChurnData(activity.reset_index(drop=True), labels)


def request_rows(data: ChurnData, features: tuple[str, ...]) -> list[dict]:
    """What a client sends at prediction time: each customer's features as known at its label
    time (the same point in time training used), as JSON-ready rows."""
    from loopml.features import FeatureView, point_in_time_join

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


CONFIG = """\
# loopml example project: customer churn. Every key is documented in docs/configuration.md.
project = "churn-example"
home = ".loopml"

[storage]
uri = "artifacts"            # under home; or s3://bucket/prefix with the s3 plugin

[trackers.local]

[monitors.drift-log]

[datasets.activity]
source = "data/activity.csv"
[datasets.activity.columns]
customer_id = { type = "int", nullable = false }
event_timestamp = { type = "timestamp", nullable = false }
tenure_months = { type = "int", min = 0 }
monthly_charges = { type = "float", min = 0 }
support_calls = { type = "int", min = 0 }
contract = { type = "category", allowed = ["month", "annual", "two_year"] }
region = { type = "category" }

[datasets.labels]
source = "data/labels.csv"
[datasets.labels.columns]
customer_id = { type = "int", nullable = false }
label_timestamp = { type = "timestamp", nullable = false }
churned = { type = "int", nullable = false, min = 0, max = 1 }
senior = { type = "category", allowed = ["yes", "no"] }

[pipeline]
model_name = "churn"
entity = "customer_id"
labels_dataset = "labels"
label = "churned"
label_timestamp = "label_timestamp"
sensitive_attribute = "senior"

[pipeline.features]
view = "customer_activity"
dataset = "activity"
timestamp = "event_timestamp"
ttl_days = 45
numeric = ["tenure_months", "monthly_charges", "support_calls"]
categorical = ["contract", "region"]

[pipeline.training]
seed = 7
epochs = 25

[pipeline.gates]
min_auc = 0.70
regression_margin = 0.01
max_fairness_gap = 0.12
latency_p99_ms = 50.0

[pipeline.drift]
alpha = 0.01
min_samples = 200

[profiles.ci.pipeline.training]
epochs = 10
"""


def init_project(folder: Path, *, n_customers: int = 4000, seed: int = 0) -> Path:
    """Create an example project: ``loopml.toml`` and generated data under ``data/``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loopml.toml").write_text(CONFIG)
    write(generate(n_customers, seed=seed), folder / "data")
    return folder / "loopml.toml"
