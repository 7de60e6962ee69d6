"""The loopml plugin contract: every hook a plugin may implement.

Two shapes of hooks:

* **Registration hooks** (``loopml_<kind>s``) declare backends. Each returns a list of
  :class:`loopml.specs.BackendSpec`. The core collects them from every plugin; config picks one
  (or, for trackers and monitors, several) by name. Two plugins declaring one name is an error that
  names both. A registration hook that raises is reported naming the plugin; in strict mode
  (``LOOPML_STRICT_PLUGINS=1``) it is an error, otherwise the plugin's backends are skipped.
* **Lifecycle hooks** (``loopml_after_*``, ``loopml_on_*``) observe the loop. Every
  implementation is called (results are ignored). One that raises is recorded as a
  :class:`loopml.records.HookFailure`, logged with plugin and hook name, and the other plugins and
  the flow carry on: a notification must never break training or promotion. They are called
  through pluggy, so ``@hookimpl(wrapper=True)`` implementations run around the others.

Every lifecycle hook (and ``loopml_before_promotion``) also gets ``context``, a
:class:`loopml.records.HookContext` with the project's name, profile, root, home, validated config
and the plugins' settings; it is None only for ``loopml_on_error`` when the configuration failed to
load. An implementation takes only the arguments it names (older plugins without ``context`` work).

Implement hooks with ``loopml.hookimpl``::

    @hookimpl  # from loopml.plugins import hookimpl
    def loopml_after_promotion(event): notify_team(f"{event.name} v{event.to_version} is now {event.alias}")

A misspelled hook name (``loopml_after_promoton``) is rejected when the plugin loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from loopml.records import (
        DatasetVersion,
        DriftReport,
        GateReport,
        HookContext,
        LoopEvent,
        ModelVersion,
        PromotionEvent,
        RunInfo,
    )
    from loopml.specs import BackendSpec

PROJECT = "loopml"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Mark a plugin's implementation of a ``loopml_`` hook (also importable from :mod:`loopml.plugins`)."""


# --------------------------------------------------------------------------------------------
# Registration hooks: declare backends
# --------------------------------------------------------------------------------------------


@hookspec
def loopml_artifact_stores() -> list[BackendSpec]:
    """Declare artifact store backends (where datasets, models and reports are kept).

    When: once, when the plugin manager is built. Args: none.
    Returns: specs; ``uri_schemes`` (e.g. ``("s3",)``) lets ``storage.uri = "s3://b/p"`` pick it.
    Call semantics: all implementations are called; results are merged.
    Failure policy: a raise skips this plugin's stores with a warning (error in strict mode).
    Example::

        @hookimpl
        def loopml_artifact_stores(): return [BackendSpec("gcs", make_gcs_store, GcsOptions, uri_schemes=("gs",))]
    """


@hookspec
def loopml_trackers() -> list[BackendSpec]:
    """Declare experiment trackers (many may be enabled at once, e.g. local + mlflow + wandb).

    When: once, when the plugin manager is built. Args: none.
    Returns: specs whose factories build a :class:`loopml.protocols.Tracker`.
    Call semantics: all implementations are called; results are merged.
    Failure policy: a raise skips this plugin's trackers with a warning (error in strict mode).
    Example::

        @hookimpl
        def loopml_trackers(): return [BackendSpec("neptune", make_neptune_tracker, NeptuneOptions)]
    """


@hookspec
def loopml_registries() -> list[BackendSpec]:
    """Declare model registries (exactly one is active).

    When: once, when the plugin manager is built. Args: none.
    Returns: specs whose factories build a :class:`loopml.protocols.ModelRegistry`; the backend
    must implement ``set_alias`` as an atomic compare-and-set.
    Call semantics: all implementations are called; results are merged.
    Failure policy: a raise skips this plugin's registries with a warning (error in strict mode).
    Example::

        @hookimpl
        def loopml_registries(): return [BackendSpec("postgres", make_pg_registry, PgOptions)]
    """


@hookspec
def loopml_feature_stores() -> list[BackendSpec]:
    """Declare feature stores (exactly one is active).

    When: once, when the plugin manager is built. Args: none.
    Returns: specs whose factories build a :class:`loopml.protocols.FeatureStore` that serves the
    same definitions offline (point-in-time) and online.
    Call semantics: all implementations are called; results are merged.
    Failure policy: a raise skips this plugin's feature stores with a warning (error in strict mode).
    Example::

        @hookimpl
        def loopml_feature_stores(): return [BackendSpec("feast", make_feast_store, FeastOptions)]
    """


@hookspec
def loopml_serving_backends() -> list[BackendSpec]:
    """Declare serving backends (exactly one is active).

    When: once, when the plugin manager is built. Args: none.
    Returns: specs whose factories build a :class:`loopml.protocols.ServingBackend`.
    Call semantics: all implementations are called; results are merged.
    Failure policy: a raise skips this plugin's backends with a warning (error in strict mode).
    Example::

        @hookimpl
        def loopml_serving_backends(): return [BackendSpec("torchserve", make_torchserve, TorchServeOptions)]
    """


@hookspec
def loopml_monitors() -> list[BackendSpec]:
    """Declare monitors (many may be enabled: drift log, Prometheus, Grafana, alerting).

    When: once, when the plugin manager is built. Args: none.
    Returns: specs whose factories build a :class:`loopml.protocols.Monitor`.
    Call semantics: all implementations are called; results are merged.
    Failure policy: a raise skips this plugin's monitors with a warning (error in strict mode).
    Example::

        @hookimpl
        def loopml_monitors(): return [BackendSpec("prometheus", make_prom_monitor, PromOptions)]
    """


@hookspec
def loopml_trainers() -> list[BackendSpec]:
    """Declare trainers (exactly one trains a model: ``[pipeline.model] trainer = "<name>"``).

    When: once, when the plugin manager is built. Args: none.
    Returns: specs whose factories build a :class:`loopml.protocols.Trainer`; options come from
    ``[pipeline.model.options]`` and are validated by the spec's ``options_model``.
    Call semantics: all implementations are called; results are merged.
    Failure policy: a raise skips this plugin's trainers with a warning (error in strict mode).
    Example::

        @hookimpl
        def loopml_trainers(): return [BackendSpec("gbdt", make_gbdt_trainer, GbdtOptions)]
    """


@hookspec
def loopml_gate_checks() -> list[BackendSpec]:
    """Declare extra validation gate checks ("no slice below X", "calibration error below Y").

    When: once, when the plugin manager is built. Args: none.
    Returns: specs whose factories build a callable ``check(ctx) -> GateCheck``, where ``ctx`` is a
    :class:`loopml.validation.GateContext` (labels, both models' predictions, holdout rows,
    metrics, slices). A project turns a check on with ``[pipeline.gates.checks.<name>]`` and its
    options, validated by the spec's ``options_model``.
    Call semantics: all implementations are called; results are merged.
    Failure policy: a raise skips this plugin's checks with a warning (error in strict mode); a check
    that raises while gating fails its gate, with the error as the reason.
    Example::

        @hookimpl
        def loopml_gate_checks(): return [BackendSpec("min-slice-auc", make_min_slice_check, MinSliceOptions)]
    """


# --------------------------------------------------------------------------------------------
# Decision hooks: may change what the loop does
# --------------------------------------------------------------------------------------------


@hookspec
def loopml_settings_model() -> type:
    """Declare this plugin's settings: the pydantic model of its ``[plugins.<name>]`` table.

    When: once per workspace, when ``loopml.toml`` is opened (before any work starts). Args: none.
    Returns: a pydantic ``BaseModel`` class (``extra="forbid"``: a misspelled key is an error); hooks
    get the settings as ``context.settings["<name>"]`` (entry-point name, or a project plugin's module).
    Call semantics: every implementation is called; each model belongs to the plugin that returned it.
    Failure policy: a table that does not fit the model, a table for a plugin that declares no
    settings, or an implementation that raises stops the workspace from opening, naming the key.
    Example::

        @hookimpl
        def loopml_settings_model(): return FreezeSettings  # a pydantic model, extra="forbid"
    """


@hookspec(firstresult=True)
def loopml_before_promotion(model_name: str, candidate: str, report: GateReport,
                            context: HookContext | None) -> str | None:
    """Veto a promotion: return a reason to block it, or None to let it through.

    When: after every gate ran and passed, before the report is stored and the candidate registered.
    Args: ``model_name``; ``candidate`` how the report names the candidate; ``report`` the gates.
    ``context``: the project it fires for (name, profile, root, home, config).
    Returns: a one-line reason to block, or None.
    Call semantics: first non-None result wins (later implementations are not called). A veto is
    added to the report as the failed check ``promotion-veto`` and lands in the registry history.
    Failure policy: an implementation that raises blocks the promotion (fail closed), with the
    plugin and error as the reason.
    Example::

        @hookimpl
        def loopml_before_promotion(model_name, candidate, report):
            return "change freeze until Monday" if freeze_active() else None
    """


# --------------------------------------------------------------------------------------------
# Lifecycle hooks: observe the loop
# --------------------------------------------------------------------------------------------


@hookspec
def loopml_after_dataset_versioned(dataset: DatasetVersion, created: bool, context: HookContext | None) -> None:
    """A dataset was ingested and stored (or found unchanged).

    When: after the manifest is written, i.e. the version is complete and visible; derived from the
    event ``loopml.dataset.versioned`` (:mod:`loopml.events`).
    Args: ``dataset`` the version; ``created`` False when identical data already existed.
    ``context``: the project it fires for (name, profile, root, home, config).
    Returns: nothing. Call semantics: every implementation is called.
    Failure policy: a raise is recorded as a HookFailure and logged; the flow goes on.
    Example::

        @hookimpl
        def loopml_after_dataset_versioned(dataset, created):
            if created: catalog.publish(dataset.ref, dataset.row_count)
    """


@hookspec
def loopml_after_model_trained(run: RunInfo, artifact_key: str, metrics: dict[str, float],
                               context: HookContext | None) -> None:
    """A model finished training and its artifact is stored.

    When: after training, before validation (not when an identical model was reused); derived from
    the event ``loopml.model.trained``. Args: ``run`` the tracked run; ``artifact_key`` the
    store key of the model artifact; ``metrics`` final training metrics.
    ``context``: the project it fires for (name, profile, root, home, config).
    Returns: nothing. Call semantics: every implementation is called.
    Failure policy: a raise is recorded as a HookFailure and logged; the flow goes on.
    Example::

        @hookimpl
        def loopml_after_model_trained(run, artifact_key, metrics): log.info("run %s trained: %s", run.run_id, metrics)
    """


@hookspec
def loopml_after_validation(report: GateReport, context: HookContext | None) -> None:
    """A candidate was validated against the current production model.

    When: after every gate (and the veto) ran and the report was stored, whether it passed or not,
    from the validation stage itself: a flow, the CLI or a notebook calling
    ``loopml.stages.validation.validate`` alike; derived from the event ``loopml.model.validated``.
    Args: ``report`` the gates with their values, thresholds, verdicts and reasons.
    ``context``: the project it fires for (name, profile, root, home, config).
    Returns: nothing. Call semantics: every implementation is called.
    Failure policy: a raise is recorded as a HookFailure and logged; the flow goes on.
    Example::

        @hookimpl
        def loopml_after_validation(report): if not report.passed: chat.post(report.failed_checks[0].reason)
    """


@hookspec
def loopml_after_model_registered(model: ModelVersion, context: HookContext | None) -> None:
    """A model version was added to the registry (status candidate, approved or rejected).

    When: after the registry transaction committed; derived from the event
    ``loopml.model.registered``. Args: ``model`` the new version.
    ``context``: the project it fires for (name, profile, root, home, config).
    Returns: nothing. Call semantics: every implementation is called.
    Failure policy: a raise is recorded as a HookFailure and logged; the flow goes on.
    Example::

        @hookimpl
        def loopml_after_model_registered(model): audit.write(model.ref, model.dataset_version, model.git_commit)
    """


@hookspec
def loopml_after_promotion(event: PromotionEvent, context: HookContext | None) -> None:
    """An alias (e.g. ``production``) moved to another version, by promotion or rollback.

    When: after the compare-and-set committed and history was appended (a canary start moves the
    ``canary`` alias, so it fires too); derived from the events ``loopml.model.promoted``,
    ``loopml.model.rolled-back``, ``loopml.model.alias-cleared`` and ``loopml.canary.started``.
    Args: ``event`` with model name, alias, from/to version (None: the alias was cleared), action
    (promote, rollback, clear), actor and reason.
    ``context``: the project it fires for (name, profile, root, home, config).
    Returns: nothing. Call semantics: every implementation is called.
    Failure policy: a raise is recorded as a HookFailure and logged; the alias stays moved.
    Example::

        @hookimpl
        def loopml_after_promotion(event): grafana.annotate(f"{event.name} {event.action} to v{event.to_version}")
    """


@hookspec
def loopml_on_drift(report: DriftReport, context: HookContext | None) -> None:
    """Drift was confirmed on live inputs (enough samples, corrected p-values).

    When: after the drift report is stored, before retraining is triggered; derived from the event
    ``loopml.drift.detected``.
    Args: ``report`` per-feature statistics and the verdict.
    ``context``: the project it fires for (name, profile, root, home, config).
    Returns: nothing. Call semantics: every implementation is called.
    Failure policy: a raise is recorded as a HookFailure and logged; retraining still triggers.
    Example::

        @hookimpl
        def loopml_on_drift(report): pager.alert(f"drift on {', '.join(report.drifted_features)}")
    """


@hookspec
def loopml_on_event(event: LoopEvent, context: HookContext | None) -> None:
    """A lifecycle fact: a dataset versioned; a model trained, validated, registered, promoted,
    rejected or rolled back; a canary started; a drift check ran or drift was detected; live
    performance measured or degraded (kinds in :mod:`loopml.events`).

    When: after the fact is committed (registry moved, report stored), from flows and from the CLI
    alike, just before the same event goes to Prefect with resource ``loopml.model.<project>.<model>``.
    Args: ``event`` with ``kind``, ``project``, ``model``, ``version``, ``reason``, ``actor`` and a
    JSON-ready ``payload``.
    ``context``: the project it fires for (name, profile, root, home, config).
    Returns: nothing. Call semantics: every implementation is called; the specific hook derived
    from the kind (``loopml.events.DERIVED_HOOKS``) fires first, so a plugin that implements both
    hears the fact twice: implement one of them per fact.
    Failure policy: a raise is recorded as a HookFailure and logged; the loop goes on.
    Example::

        @hookimpl
        def loopml_on_event(event): if event.kind == "loopml.model.rolled-back":
                pager.alert(f"{event.project}/{event.model}: {event.reason}")
    """


@hookspec
def loopml_on_error(stage: str, error: BaseException, context: HookContext | None) -> None:
    """A stage of the loop failed.

    When: a flow stage raised, before the error propagates to Prefect.
    Args: ``stage`` e.g. ``"ingest"`` or ``"train"``; ``error`` the exception.
    ``context``: the project it fires for (name, profile, root, home, config).
    Returns: nothing. Call semantics: every implementation is called.
    Failure policy: a raise is recorded and logged; the original error still propagates.
    Example::

        @hookimpl
        def loopml_on_error(stage, error): sentry_sdk.capture_exception(error)
    """


REGISTRATION_HOOKS: dict[str, str] = {
    "loopml_artifact_stores": "artifact_store",
    "loopml_trackers": "tracker",
    "loopml_registries": "registry",
    "loopml_feature_stores": "feature_store",
    "loopml_serving_backends": "serving",
    "loopml_monitors": "monitor",
    "loopml_trainers": "trainer",
    "loopml_gate_checks": "gate_check",
}
DECISION_HOOKS: tuple[str, ...] = ("loopml_before_promotion", "loopml_settings_model")
LIFECYCLE_HOOKS: tuple[str, ...] = (
    "loopml_after_dataset_versioned",
    "loopml_after_model_trained",
    "loopml_after_validation",
    "loopml_after_model_registered",
    "loopml_after_promotion",
    "loopml_on_drift",
    "loopml_on_event",
    "loopml_on_error",
)
