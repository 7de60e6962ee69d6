"""Typed project configuration, the schema: one ``loopml.toml``, per-environment profiles, env overrides.

Precedence (last wins): built-in defaults < ``loopml.toml`` < ``[profiles.<name>]`` selected by
``LOOPML_PROFILE`` (or ``--profile``) < environment variables ``LOOPML__SECTION__KEY=value``
(double underscores separate levels). Environment values are read by pydantic-settings: a value
keeps its type, parsed as JSON only where the schema expects a list or a table (so a token
``12345`` stays the string it was); inside backend ``options`` JSON objects and arrays are decoded
and scalars stay strings, which the backend's own options model converts.

Loading, layering and error messages live in :mod:`loopml.config_loader`.

Unknown keys are errors that name the key and the file. Backend options are validated against the
options model of the chosen backend when the workspace opens, so a typo fails at start-up, not
half-way through a flow. Credentials belong in options declared as ``SecretStr``; they are
masked in every dump, log line and error.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loopml import tasks
from loopml.tasks import TaskKind

CONFIG_FILE = "loopml.toml"
ENV_PREFIX = "LOOPML__"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Strict):
    """Where artifacts live: a local path, or a URI whose scheme picks the store (``s3://b/p``)."""

    uri: str = "artifacts"
    backend: str | None = Field(default=None, description="force a backend instead of the scheme")
    options: dict[str, Any] = Field(default_factory=dict, repr=False)


class BackendChoice(_Strict):
    """One backend of a kind, by name, with its options."""

    backend: str
    options: dict[str, Any] = Field(default_factory=dict, repr=False)


class ColumnConfig(_Strict):
    type: str
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None

    @model_validator(mode="after")
    def _range_is_not_empty(self) -> ColumnConfig:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min: min = {self.min:g} is above max = {self.max:g}; no value could pass. "
                             "Swap them")
        return self


class DatasetConfig(_Strict):
    """A named dataset: where it comes from and the schema it must satisfy."""

    source: str | None = None
    columns: dict[str, ColumnConfig] = Field(default_factory=dict)


class FeaturesConfig(_Strict):
    """One feature view: entity-keyed, timestamped rows from a dataset."""

    view: str = "features"
    dataset: str = Field(description="dataset whose versions feed this view")
    timestamp: str = "event_timestamp"
    ttl_days: float | None = Field(default=None, description="older feature rows are not joined")
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)


class HoldoutConfig(_Strict):
    """Which labelled rows judge the model. By entity hash (default) or by time.

    ``fraction``: a stable hash of the entity id puts that share of entities in the holdout, so an
    entity stays on one side across dataset versions. ``after``: rows whose label timestamp is at or
    after this instant form the holdout (validate on the latest period); ``fraction`` is then unused.
    """

    fraction: float = Field(default=0.25, gt=0, lt=1, description="share of entities held out (hash split)")
    after: datetime | None = Field(default=None, description="time split: label timestamps >= this are held out")


class TrainingConfig(_Strict):
    """How training rows are drawn: the seed and the holdout."""

    seed: int = Field(default=7, description="seeds weight init, shuffling and the bootstrap")
    holdout: HoldoutConfig = HoldoutConfig()


class ModelConfig(_Strict):
    """Which trainer builds the model, with its options (validated by the trainer's own model)."""

    trainer: str = Field(default="mlp", description="a trainer backend: mlp, torch-module, or a plugin's")
    options: dict[str, Any] = Field(default_factory=dict, description="the trainer's options")


class GatesConfig(_Strict):
    """Validation gates. Metric names follow the task (see docs/configuration.md)."""

    thresholds: dict[str, float] | None = Field(
        default=None, description="metric -> bound in the metric's direction (auc >= 0.7, rmse <= 3); "
                                  "default: auc 0.70 (binary), macro_auc 0.70 (multiclass), r2 0.0 (regression)")
    regression_margin: float = Field(default=0.01, ge=0, description="allowed drop of the primary metric "
                                                                     "against production, beyond noise")
    bootstrap_samples: int = Field(default=300, ge=50)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    max_fairness_gap: float | None = Field(
        default=None, ge=0, description="max gap of the primary metric between slices, in the metric's units "
        "(AUC points; rmse in the target's units); default: 0.10 for binary and multiclass, and for regression "
        "the relative gap (max_relative_fairness_gap)")
    max_relative_fairness_gap: float = Field(
        default=0.25, ge=0, description="regression, unless max_fairness_gap is set: the gap of the primary "
        "metric between slices as a share of its value on the whole holdout (0.25: no slice's rmse is more "
        "than 25% of the holdout's away from another's), so the default fits any target's scale")
    min_slice_rows: int = Field(default=50, ge=1, description="smaller slices are reported, not gated")
    min_selection_rate_ratio: float | None = Field(
        default=0.8, ge=0, le=1, description="binary: lowest predicted-positive rate over the highest across "
                                             "slices (0.8: the four-fifths rule); 0 turns the check off")
    max_error_rate_gap: float | None = Field(
        default=0.2, ge=0, le=1, description="binary: largest gap of the false-positive or false-negative rate "
                                             "between slices (equalized odds difference); 1 turns it off")
    latency_p99_ms: float = Field(default=25.0, gt=0, description="absolute SLO: batch-1 p99 on the validating machine")
    max_latency_ratio: float = Field(default=1.5, gt=0, description="candidate/production median batch-1 "
                                                                     "latency, measured interleaved")
    latency_samples: int = Field(default=200, ge=20)
    checks: dict[str, dict[str, Any]] = Field(default_factory=dict, description="extra gate checks from "
                                              "plugins (loopml_gate_checks), by name, with their options")


class DriftConfig(_Strict):
    alpha: float = Field(default=0.01, gt=0, lt=1, description="family-wise false-alarm rate")
    min_samples: int = 200
    cooldown_minutes: float = 60.0


class RolloutConfig(_Strict):
    """How an approved candidate reaches production when a production model exists."""

    mode: Literal["canary", "shadow", "direct"] = Field(
        default="canary", description="canary: a share of live traffic; shadow: a copy of every request, "
                                      "answers still from production; direct: move production at once")
    canary_weight: float = Field(default=0.1, gt=0, lt=1, description="share of traffic for the canary")
    min_requests: int = Field(default=200, ge=10, description="answered rows per version before judging")
    max_wait_minutes: float = Field(default=30.0, gt=0, description="judge (and roll back for lack of "
                                                                    "traffic) after this long")
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="failed rows / rows of the candidate")
    max_p99_ratio: float = Field(default=2.0, gt=0, description="candidate p99 / production p99 (ignored below "
                                                                "gates.latency_p99_ms)")
    max_output_shift: float = Field(default=0.5, ge=0, le=1, description="KS distance (scores, values) or total "
                                    "variation (classes) between candidate and production answers; loose by "
                                    "default, since a model retrained after drift should answer differently "
                                    "(seen: 0.01-0.39 on the examples). It cannot see a model that answers the "
                                    "right mix to the wrong rows (shuffled: 0.01-0.08; constant: 0.44-0.56): "
                                    "min_agreement does")
    min_agreement: float = Field(default=0.25, ge=-1, le=1, description="the candidate's answers against "
                                 "production's on the same rows (the candidate's rows scored again by production; "
                                 "shadow: the mirrored pairs): Spearman correlation of scores or values, Cohen's "
                                 "kappa of classes. Retrained models reached 0.85-1.00 (a multiclass model retrained "
                                 "after drift 0.54); constant and shuffled ones about 0, inverted ones -0.33 to -1")
    max_disagreement: float = Field(default=0.2, ge=0, le=1, description="shadow: share of rows where the "
                                    "candidate's answer differs from production's (class, 0.5 cut, or 10% of "
                                    "the production IQR for values)")


class MonitoringConfig(_Strict):
    """Live performance from labels that arrive after the predictions."""

    labels_dataset: str | None = Field(default=None, description="dataset of delayed labels (entity, "
                                       "timestamp, label); default: pipeline.labels_dataset")
    max_label_delay_hours: float = Field(default=24 * 30, gt=0, description="a label joins the entity's latest "
                                         "prediction at most this long before it")
    min_labels: int = Field(default=100, ge=10, description="joined labels per version before a verdict")
    max_drop: float = Field(default=0.05, ge=0, description="degraded when the live primary metric is worse "
                                                            "than its holdout value by more than this")


MODEL_NAME = r"[a-z0-9][a-z0-9_-]{0,62}"


class PipelineConfig(_Strict):
    """What the loop trains: labels, task, features, trainer, holdout, gates and drift settings."""

    model_name: str = Field(pattern=f"^{MODEL_NAME}$")
    entity: str
    labels_dataset: str
    label: str
    label_timestamp: str
    task: TaskKind = Field(default="binary", description="binary, multiclass or regression")
    sensitive_attribute: str | None = Field(default=None, description="column (of the labels or a feature) "
                                            "whose slices the fairness gate compares")
    features: FeaturesConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    gates: GatesConfig = GatesConfig()
    drift: DriftConfig = DriftConfig()
    rollout: RolloutConfig = RolloutConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

    @model_validator(mode="after")
    def _thresholds_fit_task(self) -> PipelineConfig:
        known = [m.name for m in tasks.METRICS[self.task]]
        for name in self.gates.thresholds or {}:
            if name not in known:
                raise ValueError(f"gates.thresholds.{name}: not a {self.task} metric; choose one of: "
                                 + ", ".join(known))
        return self

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(tasks.DEFAULT_THRESHOLDS[self.task] if self.gates.thresholds is None else self.gates.thresholds)


class OpenLineageConfig(_Strict):
    """Where every flow run's OpenLineage events go (START, then COMPLETE or FAIL, with the dataset
    and model versions it read and wrote), for Marquez or any OpenLineage consumer."""

    transport: Literal["file", "http", "console"] = Field(
        "file", description="file: one JSON event per line; http: POST to an OpenLineage API (Marquez); console: "
        "the log")
    path: Path | None = Field(None, description="file transport: default <home>/openlineage/events.jsonl")
    url: str | None = Field(None, description="http transport: the API's base URL, e.g. http://marquez:5000")
    endpoint: str = "api/v1/lineage"
    api_key_env: str | None = Field(None, description="http transport: the environment variable holding an API key "
                                    "(sent as a bearer token; never written in loopml.toml)")
    namespace: str | None = Field(None, description="the jobs' and datasets' namespace; default loopml/<project>")
    timeout: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _http_needs_a_url(self) -> OpenLineageConfig:
        if self.transport == "http" and not self.url:
            raise ValueError("url: the http transport needs the API's URL, e.g. url = \"http://localhost:5000\"")
        return self


class LoopmlConfig(_Strict):
    """The whole project configuration, validated."""

    project: str = "loopml"
    home: Path = Path(".loopml")
    plugins: list[str] | dict[str, dict[str, Any]] = Field(
        default_factory=list, description="project plugin modules to load (`plugins = [\"churn_gates\"]`), or "
        "one table per plugin with its settings (`[plugins.churn_gates]`), validated by the model the plugin "
        "declares (loopml_settings_model); a table for an installed plugin only configures it")
    load_plugins: list[str] | None = None
    disable_plugins: list[str] = Field(default_factory=list)
    storage: StorageConfig = StorageConfig()
    registry: BackendChoice = BackendChoice(backend="sqlite")
    trackers: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"local": {}}, repr=False)
    feature_store: BackendChoice = BackendChoice(backend="local")
    serving: BackendChoice = BackendChoice(backend="builtin")
    monitors: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"drift-log": {}}, repr=False)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    pipeline: PipelineConfig | None = None
    openlineage: OpenLineageConfig | None = Field(None, description="emit OpenLineage run events from every flow")
    approvals: dict[str, int] | None = Field(
        default=None, description="approvals needed to move each alias, e.g. `production = 1`: applied to the "
        "registry (which enforces it for every writer, with separation of duties: neither whoever trained nor "
        "whoever requested a move may approve it); 0 removes an alias's rule; absent: the registry's policy "
        "stays as it is")

    @field_validator("approvals")
    @classmethod
    def _approvals_per_alias(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for alias, count in (value or {}).items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", alias):
                raise ValueError(f"approvals.{alias}: not an alias name (lowercase letters, digits, '_' or '-')")
            if not 0 <= count <= 10:
                raise ValueError(f"approvals.{alias} = {count}: use 0 (no approval) to 10")
        return value

    # Set by the loader, not by users.
    root: Path = Field(default=Path("."), exclude=True)
    source_file: Path | None = Field(default=None, exclude=True)
    profile: str | None = Field(default=None, exclude=True)

    @property
    def plugin_modules(self) -> list[str]:
        """The plugins named in ``plugins`` (modules to load unless installed under that name)."""
        return list(self.plugins)

    @property
    def plugin_tables(self) -> dict[str, dict[str, Any]]:
        """``[plugins.<name>]`` tables: each plugin's raw settings."""
        return dict(self.plugins) if isinstance(self.plugins, dict) else {}

    @property
    def home_dir(self) -> Path:
        return self.home if self.home.is_absolute() else (self.root / self.home)
