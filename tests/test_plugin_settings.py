"""`[plugins.<name>]`: a plugin's own settings in loopml.toml, validated by the model it declares."""

from __future__ import annotations

import sys

import pytest

from loopml.context import Workspace
from loopml.errors import ConfigError
from loopml.plugins import reset_plugin_manager
from loopml.records import GateReport

VETO = '''
from pydantic import BaseModel, ConfigDict

from loopml.plugins import hookimpl


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    minimum_auc: float = 0.9
    freeze: bool = False


@hookimpl
def loopml_settings_model():
    return Settings


@hookimpl
def loopml_before_promotion(model_name, candidate, report, context):
    settings = context.settings["team_veto"]
    if settings.freeze:
        return "team_veto: change freeze"  # names itself: the reason must not say it twice
    auc = report.metrics.get("auc", 0.0)
    return None if auc >= settings.minimum_auc else f"auc {auc:.2f} below the team's {settings.minimum_auc}"
'''


@pytest.fixture
def team_project(tmp_path, monkeypatch):
    (tmp_path / "team_veto.py").write_text(VETO)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "team_veto", raising=False)
    reset_plugin_manager()
    yield tmp_path
    reset_plugin_manager()


def report(auc: float) -> GateReport:
    return GateReport("churn", "candidate", None, (), metrics={"auc": auc})


def veto(ws: Workspace, auc: float) -> str | None:
    return ws.manager.first_veto(context=ws.hook_context, model_name="churn", candidate="c", report=report(auc))


def test_a_plugin_reads_its_own_table_validated_by_its_model(team_project) -> None:
    config = team_project / "loopml.toml"
    config.write_text('project = "p"\n[plugins.team_veto]\nminimum_auc = 0.8\n')
    ws = Workspace.open(config)
    assert ws.plugin_settings["team_veto"].minimum_auc == 0.8
    assert veto(ws, 0.85) is None
    assert veto(ws, 0.75) == "team_veto: auc 0.75 below the team's 0.8"
    config.write_text('project = "p"\n[plugins.team_veto]\nfreeze = true\n')
    assert veto(Workspace.open(config), 0.99) == "team_veto: change freeze"  # its name once
    config.write_text('project = "p"\nplugins = ["team_veto"]\n')  # loaded without a table: the defaults
    assert Workspace.open(config).plugin_settings["team_veto"].minimum_auc == 0.9


def test_a_misspelled_setting_or_an_unclaimed_table_is_refused_naming_the_key(team_project) -> None:
    config = team_project / "loopml.toml"
    config.write_text('project = "p"\n[plugins.team_veto]\nminimum_acu = 0.8\n')
    with pytest.raises(ConfigError, match=r"plugins.team_veto.minimum_acu: unknown option \(did you mean "
                                          r"'minimum_auc'\?\)"):
        Workspace.open(config)
    config.write_text('project = "p"\n[plugins.team_veto]\nminimum_auc = "high"\n')
    with pytest.raises(ConfigError, match=r"plugins\.team_veto\.minimum_auc"):
        Workspace.open(config)
    config.write_text('project = "p"\nplugins = ["team_veto"]\n[plugins.loopml]\nx = 1\n')
    with pytest.raises(ConfigError):  # TOML itself refuses a list and a table under one key
        Workspace.open(config)
    config.write_text('project = "p"\n[plugins.team_veto]\n[plugins.loopml]\nx = 1\n')
    with pytest.raises(ConfigError, match=r"\[plugins.loopml\] sets x, but plugin 'loopml' declares no settings"):
        Workspace.open(config)
