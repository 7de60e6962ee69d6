"""loopml's Grafana dashboard: one for every project, model and version, chosen by its variables.

Built with Grafana's schema-generated builders (``grafana-foundation-sdk``) and checked against the
same schema by :func:`schema_problems`: the JSON is decoded into the SDK's typed dashboard model
(every panel's ``options`` and ``fieldConfig`` into its panel plugin's model) and encoded again; a
key the schema does not know, a value of the wrong type or a ``null`` shows up as a difference.

The variables: ``datasource`` (any Prometheus), ``project`` and ``model`` (from the labels of
``loopml_alias_version``, which every loopml project exports) and ``version`` (several, or all).
Serving metrics carry ``model`` and ``version``; the loop's own (drift, gates, aliases) carry
``project`` and ``model``. Promotions, rollbacks and canaries are organisation annotations tagged
``loopml``, ``project:<p>`` and ``model:<m>``; the dashboard's annotation query selects them with
the variables, so one dashboard serves every project.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

DASHBOARD_UID = "loopml-overview"
DATASOURCE = "${datasource}"
DEPRECATED = ("style",)  # the SDK's model still emits Grafana's pre-9 light/dark style; Grafana ignores it


def dashboard(project: str | None = None, model: str | None = None,
              datasource_uid: str | None = None) -> dict[str, Any]:
    """The overview dashboard as Grafana's dashboard JSON. ``project``/``model``/``datasource_uid``
    only preselect the variables; every value stays selectable."""
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, table, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models.dashboard import (
        DataSourceRef,
        GridPos,
        VariableOption,
        VariableRefresh,
        VariableSort,
    )

    ds = DataSourceRef(type_val="prometheus", uid=DATASOURCE)
    serving = 'model="$model",version=~"$version"'
    loop = 'project="$project",model="$model"'

    def query(expr: str, legend: str, ref: str = "A") -> Any:
        return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(ds)

    def legend() -> Any:
        return cb.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST).placement(
            common.LegendPlacement.BOTTOM).show_legend(True).calcs([])

    def tooltip() -> Any:
        return cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)

    def series(title: str, unit: str) -> Any:
        return timeseries.Panel().title(title).unit(unit).legend(legend()).tooltip(tooltip())

    def selected(value: str | None) -> Any:
        return VariableOption(selected=True, text=value, value=value) if value else None

    panels = [
        series("Traffic by version (rows/s)", "rps").with_target(
            query(f"sum by (version) (rate(loopml_prediction_rows_total{{{serving}}}[$__rate_interval]))",
                  "v{{version}}")),
        series("Traffic share by version", "percentunit").min(0).max(1).with_target(
            query(f"loopml_traffic_weight{{{serving}}}", "v{{version}}")),
        series("p99 latency by version", "s").with_target(query(
            f"histogram_quantile(0.99, sum by (version, le) "
            f"(rate(loopml_request_latency_seconds_bucket{{{serving}}}[$__rate_interval])))", "v{{version}}")),
        series("Errors by version: failed rows, HTTP 5xx", "rps").with_target(
            query(f"sum by (version) (rate(loopml_prediction_errors_total{{{serving}}}[$__rate_interval]))",
                  "v{{version}} failed rows")).with_target(
            query(f'sum by (version) (rate(loopml_requests_total{{{serving},status=~"5.."}}[$__rate_interval]))',
                  "v{{version}} HTTP 5xx", "B")),
        heatmap.Panel().title("Drift: test statistic per feature").calculate(False).show_value(
            common.VisibilityMode.AUTO).show_legend().show_tooltip().hide_y_histogram().with_target(
            query(f"loopml_drift_statistic{{{loop}}}", "{{feature}}")),
        statetimeline.Panel().title("Drifted features (Holm-adjusted)").show_value(common.VisibilityMode.AUTO)
        .row_height(0.9).legend(legend()).tooltip(tooltip()).with_target(
            query(f"loopml_drift_feature_drifted{{{loop}}}", "{{feature}}")),
        series("Live performance (delayed labels)", "none").with_target(
            query(f'loopml_live_metric{{{loop},version=~"$version"}}', "v{{version}} {{metric}}")),
        stat.Panel().title("Production version").color_mode(common.BigValueColorMode.VALUE).text_mode(
            common.BigValueTextMode.VALUE).reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(query(f'loopml_alias_version{{{loop},alias="production"}}', "production")),
        stat.Panel().title("Drift now").color_mode(common.BigValueColorMode.VALUE).text_mode(
            common.BigValueTextMode.VALUE).reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(query(f"loopml_drift_detected{{{loop}}}", "drift")),
        table.Panel().title("Gates of the last candidate").show_header(True).cell_height(common.TableCellHeight.SM)
        .with_target(query(f"loopml_gate_value{{{loop}}}", "{{check}}").instant()),
    ]
    layout = [(0, 0, 12), (12, 0, 12), (0, 8, 12), (12, 8, 12), (0, 16, 12), (12, 16, 12), (0, 24, 12),
              (12, 24, 6), (18, 24, 6), (0, 32, 24)]
    board = (db.Dashboard("loopml").uid(DASHBOARD_UID).description(
        "loopml: serving, drift, performance and gates of one model; choose project, model and versions above")
        .tags(["loopml"]).refresh("30s").time("now-6h", "now").timezone("browser")
        .with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
                       .current(selected(datasource_uid) or VariableOption(selected=True, text="default",
                                                                          value="default")))
        .with_variable(_values(db, "project", "label_values(loopml_alias_version, project)", ds, selected(project),
                               VariableRefresh, VariableSort))
        .with_variable(_values(db, "model", 'label_values(loopml_alias_version{project="$project"}, model)', ds,
                               selected(model), VariableRefresh, VariableSort))
        .with_variable(_values(db, "version", 'label_values(loopml_prediction_rows_total{model="$model"}, version)',
                               ds, VariableOption(selected=True, text="All", value="$__all"), VariableRefresh,
                               VariableSort).multi(True).include_all(True).all_value(".*"))
        .annotation(db.AnnotationQuery().name("loopml promotions").datasource(
            DataSourceRef(type_val="grafana", uid="-- Grafana --")).enable(True).icon_color("purple")
            .target(db.AnnotationTarget().type("tags").tags(["loopml", "project:$project", "model:$model"])
                    .limit(100).match_any(False))))
    for number, (panel, (x, y, w)) in enumerate(zip(panels, layout, strict=True), start=1):
        board = board.with_panel(panel.id(number).datasource(ds).grid_pos(GridPos(h=8, w=w, x=x, y=y)))
    encoded = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for key in DEPRECATED:
        encoded.pop(key, None)
    return encoded


def _values(db: Any, name: str, expr: str, ds: Any, current: Any, refresh: Any, sort: Any) -> Any:
    """A query variable over Prometheus label values, refreshed with the time range."""
    variable = (db.QueryVariable(name).label(name).query(expr).datasource(ds)
                .refresh(refresh.ON_TIME_RANGE_CHANGED).sort(sort.ALPHABETICAL_ASC))
    return variable.current(current) if current is not None else variable


def schema_problems(board: dict[str, Any]) -> list[str]:
    """Where ``board`` departs from Grafana's dashboard schema as the foundation SDK publishes it:
    decoded into the typed model (panel options by their plugin's model) and encoded again, every
    key the schema does not know, every value it reads differently, every ``null``. Keys left out
    take the schema's defaults, as in Grafana. Empty: every key given is the schema's own."""
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()
    try:
        again = json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder))
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        return [f"$: the schema's model cannot read it ({type(exc).__name__}: {exc})"]
    for key in DEPRECATED:
        again.pop(key, None)
    problems: list[str] = []
    _compare(board, again, "$", problems)
    _check_types(Dashboard.from_json(board), "$", problems)
    return problems


def _check_types(value: Any, path: str, problems: list[str]) -> None:
    """Every field of the decoded model against the type the schema gives it (its annotation)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_types(item, f"{path}[{i}]", problems)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_types(item, f"{path}.{key}", problems)
    elif type(value).__module__.startswith("grafana_foundation_sdk.models") and hasattr(value, "__dict__"):
        hints = typing.get_type_hints(type(value))
        for name, item in vars(value).items():
            if name in hints and not _fits(item, hints[name]):
                problems.append(f"{path}.{name}: {json.dumps(item, default=str)[:60]} is not {hints[name]}")
            _check_types(item, f"{path}.{name}", problems)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a decoded value is of the schema's type; the SDK's decoder leaves enum members and
    literals as their JSON values, so those are checked by value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in args)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and (not args or all(_fits(item, args[0]) for item in value))
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_fits(item, args[1]) for item in value.values()))
    if hint is type(None):
        return value is None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {member.value for member in hint}
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _compare(given: Any, schema: Any, path: str, problems: list[str]) -> None:
    if given is None:
        problems.append(f"{path}: null")
    elif isinstance(given, dict) and isinstance(schema, dict):
        for key in sorted(set(given) | set(schema)):
            if key not in schema:
                problems.append(f"{path}.{key}: not in the schema")
            elif key in given:  # a key left out takes the schema's default, as Grafana does
                _compare(given[key], schema[key], f"{path}.{key}", problems)
    elif isinstance(given, list) and isinstance(schema, list) and len(given) == len(schema):
        for i, (a, b) in enumerate(zip(given, schema, strict=True)):
            _compare(a, b, f"{path}[{i}]", problems)
    elif given != schema or type(given) is not type(schema):
        problems.append(f"{path}: {json.dumps(given)[:60]} is {json.dumps(schema)[:60]} in the schema")
