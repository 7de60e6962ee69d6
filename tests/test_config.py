"""Typed configuration: errors name the key and the fix; profiles and env overrides; secrets masked."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from loopml.cli import main
from loopml.config_loader import load_config
from loopml.context import Workspace
from loopml.errors import ConfigError, UnknownBackendError
from loopml.plugins import get_plugin_manager, hookimpl
from loopml.specs import BackendSpec

CANARY = "canary-s3cr3t-7f1d"


class VaultOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str
    api_key: SecretStr
    retries: int = 3


class VaultTracker:
    """A tracker that only keeps its options (what the test inspects)."""

    name = "vault"

    def __init__(self, options: VaultOptions) -> None:
        self.api_key = options.api_key

    def start_run(self, run): ...
    def log_params(self, run_id, params): ...
    def log_metrics(self, run_id, metrics, step): ...
    def set_tags(self, run_id, tags): ...
    def log_artifact(self, run_id, path, name=None): ...
    def end_run(self, run_id, status="FINISHED"): ...


class VaultPlugin:
    @hookimpl
    def loopml_trackers(self):
        return [BackendSpec("vault", lambda options, ctx: VaultTracker(options), VaultOptions)]


def write(project: Path, text: str) -> Path:
    path = project / "loopml.toml"
    path.write_text(text)
    return path


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config()
    assert cfg.registry.backend == "sqlite" and list(cfg.trackers) == ["local"]
    assert cfg.home_dir == tmp_path.resolve() / ".loopml"


def test_unknown_key_names_key_and_file(project: Path) -> None:
    write(project, '[storage]\nuri = "x"\nbucket = "y"\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "storage.bucket: unknown key" in str(info.value)
    assert str(project / "loopml.toml") in str(info.value)


def test_a_misspelled_key_in_a_nested_section_gets_the_key_it_resembles(project: Path) -> None:
    write(project, '[pipeline]\nmodel_name = "m"\nentity = "e"\nlabels_dataset = "l"\nlabel = "y"\n'
                   'label_timestamp = "t"\n[pipeline.features]\ndataset = "f"\n[pipeline.gates]\n'
                   'max_fairnes_gap = 0.2\nzzz = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "pipeline.gates.max_fairnes_gap: unknown key (did you mean 'max_fairness_gap'?)" in str(info.value)
    assert "pipeline.gates.zzz: unknown key; remove it or check its spelling" in str(info.value)  # no look-alike


def test_wrong_type_names_key_and_value(project: Path) -> None:
    write(project, '[pipeline]\nmodel_name = "m"\nentity = "e"\nlabels_dataset = "l"\nlabel = "y"\n'
                   'label_timestamp = "t"\n[pipeline.features]\ndataset = "f"\n'
                   '[pipeline.training]\nseed = "many"\n')
    with pytest.raises(ConfigError, match=r"pipeline\.training\.seed: .*'many'"):
        load_config()


def test_keys_of_loopml_0_1_say_where_they_moved(project: Path) -> None:
    write(project, '[pipeline]\nmodel_name = "m"\nentity = "e"\nlabels_dataset = "l"\nlabel = "y"\n'
                   'label_timestamp = "t"\n[pipeline.features]\ndataset = "f"\n'
                   '[pipeline.training]\nepochs = 3\n[pipeline.gates]\nmin_auc = 0.7\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "pipeline.training.epochs: moved: set it in [pipeline.model.options]" in str(info.value)
    assert "pipeline.gates.min_auc: moved: use [pipeline.gates] thresholds" in str(info.value)


def test_thresholds_must_be_metrics_of_the_task(project: Path) -> None:
    write(project, '[pipeline]\nmodel_name = "m"\nentity = "e"\nlabels_dataset = "l"\nlabel = "y"\n'
                   'label_timestamp = "t"\ntask = "regression"\n[pipeline.features]\ndataset = "f"\n'
                   '[pipeline.gates]\nthresholds = { auc = 0.7 }\n')
    with pytest.raises(ConfigError, match=r"gates\.thresholds\.auc: not a regression metric; choose one of: "
                                          r"rmse, mae, r2"):
        load_config()


def test_invalid_toml_is_reported_with_the_file(project: Path) -> None:
    write(project, "project = \n")
    with pytest.raises(ConfigError, match=r"not valid TOML"):
        load_config()


def test_profile_and_environment_overrides(project: Path) -> None:
    write(project, 'project = "p"\n[storage]\nuri = "base"\n[profiles.prod.storage]\nuri = "s3://b/prod"\n')
    assert load_config().storage.uri == "base"
    assert load_config(profile="prod").storage.uri == "s3://b/prod"
    assert load_config(environ={"LOOPML_PROFILE": "prod"}).storage.uri == "s3://b/prod"
    env = {"LOOPML_PROFILE": "prod", "LOOPML__STORAGE__URI": "env-wins",
           "LOOPML__PIPELINE__TRAINING__EPOCHS": "3"}
    with pytest.raises(ConfigError, match=r"pipeline"):  # partial pipeline table is incomplete
        load_config(environ=env)
    env.pop("LOOPML__PIPELINE__TRAINING__EPOCHS")
    assert load_config(environ=env).storage.uri == "env-wins"


def test_unknown_profile_lists_the_defined_ones(project: Path) -> None:
    write(project, '[profiles.staging]\nproject = "s"\n[profiles.prod]\nproject = "p"\n')
    with pytest.raises(ConfigError, match=r"profile 'prdo' is not defined.*prod, staging"):
        load_config(profile="prdo")


def test_unknown_backend_lists_choices_at_startup(project: Path) -> None:
    write(project, '[trackers.mlfow]\n')
    with pytest.raises(UnknownBackendError, match=r"unknown tracker 'mlfow'.*choose one of: local"):
        Workspace.open()


def test_misspelled_backend_option_names_the_key_and_allowed_options(project: Path) -> None:
    write(project, '[registry]\nbackend = "sqlite"\n[registry.options]\npaht = "r.db"\n')
    with pytest.raises(ConfigError, match=r"registry\.options\.paht: unknown option \(did you mean 'path'\?\); "
                                          r"allowed: path, timeout"):
        Workspace.open()


def test_secrets_never_appear_in_dumps_errors_or_logs(project: Path, capsys, caplog) -> None:
    get_plugin_manager().register(VaultPlugin(), "vault-plugin")
    write(project, f'[trackers.vault]\nurl = "https://vault"\napi_key = "{CANARY}"\n')
    caplog.set_level(logging.DEBUG)
    ws = Workspace.open()
    assert ws.trackers[0].api_key.get_secret_value() == CANARY  # the backend gets the real value
    assert CANARY not in json.dumps(ws.describe())
    assert CANARY not in repr(ws.config) and CANARY not in str(ws.selected)
    assert main(["config"]) == 0
    # A bad option next to the secret: the error names the key but never echoes values.
    write(project, f'[trackers.vault]\nurl = "https://vault"\napi_key = "{CANARY}"\nretries = "{CANARY}"\n')
    with pytest.raises(ConfigError) as info:
        Workspace.open()
    assert "trackers.vault.retries" in str(info.value) and CANARY not in str(info.value)
    assert main(["config"]) == 2
    captured = capsys.readouterr()
    assert CANARY not in captured.out + captured.err + caplog.text


def test_an_env_override_is_named_in_errors_and_its_value_never_echoed(project: Path) -> None:
    write(project, 'project = "p"\n[pipeline]\nmodel_name = "churn"\nentity = "id"\nlabels_dataset = "l"\n'
                   'label = "y"\nlabel_timestamp = "t"\n[pipeline.features]\ndataset = "f"\n')
    env = {"LOOPML__PIPELINE__GATES__CONFIDENCE": CANARY}
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    message = str(info.value)
    assert "pipeline.gates.confidence (set by $LOOPML__PIPELINE__GATES__CONFIDENCE)" in message
    assert CANARY not in message


def test_an_env_override_of_backend_options_keeps_the_default_backend(project: Path) -> None:
    write(project, 'project = "p"\n')  # no [serving] table at all
    config = load_config(environ={"LOOPML__SERVING__OPTIONS__PORT": "9000"})
    assert config.serving.backend == "builtin"
    assert Workspace(config).selected["serving"].options.port == 9000  # the backend's model converts it


def test_environment_values_keep_their_types(project: Path) -> None:
    write(project, 'project = "p"\n')
    config = load_config(environ={"LOOPML__SERVING__OPTIONS__TOKEN": "12345",  # a numeric secret stays text
                                  "LOOPML__PROJECT": "007",
                                  "LOOPML__SERVING__OPTIONS__LOG_TO_STORE": "true",
                                  "LOOPML__TRACKERS": '{"local": {}}'})  # a table where the schema wants one
    options = Workspace(config).selected["serving"].options
    assert options.token.get_secret_value() == "12345" and options.log_to_store is True
    assert config.project == "007" and config.trackers == {"local": {}}


def test_credentials_inside_an_endpoint_url_are_masked_by_loopml_config(project: Path, capsys) -> None:
    get_plugin_manager().register(VaultPlugin(), "vault-plugin")
    write(project, f'[trackers.vault]\nurl = "https://admin:{CANARY}@vault.internal:8200/v1"\napi_key = "k"\n')
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert CANARY not in out and "https://***@vault.internal:8200/v1" in out


def test_a_column_range_with_min_above_max_is_refused(project: Path) -> None:
    write(project, '[datasets.orders.columns]\namount = { type = "float", min = 10, max = 1 }\n')
    with pytest.raises(ConfigError, match=r"datasets\.orders\.columns\.amount\.min: min = 10 is above max = 1"):
        load_config()


@pytest.mark.parametrize("name", ["Churn", "churn model", "churn/v2", "-churn", "c" * 64])
def test_model_names_the_registry_serving_and_prefect_cannot_use_are_refused(project: Path, name: str) -> None:
    write(project, f'[pipeline]\nmodel_name = "{name}"\nentity = "id"\nlabels_dataset = "l"\nlabel = "y"\n'
                   'label_timestamp = "t"\n[pipeline.features]\ndataset = "f"\n')
    with pytest.raises(ConfigError, match=r"pipeline\.model_name: String should match pattern"):
        load_config()


def test_a_model_name_with_an_underscore_publishes_a_key_prefect_accepts() -> None:
    from prefect.client.schemas.actions import ArtifactCreate

    from loopml.keys import prefect_artifact_key

    key = prefect_artifact_key("churn_model-drift")
    assert key == "churn-model-drift"
    assert ArtifactCreate(key=key).key == key  # Prefect's own validator
    with pytest.raises(ValueError):
        ArtifactCreate(key="churn_model-drift")


def test_plugins_check_validates_every_profile_not_only_the_selected_one(project: Path, capsys) -> None:
    write(project, 'project = "p"\n[profiles.staging.registry]\nbackend = "sqlite"\n'
                   '[profiles.prod.registry]\nbackend = "sqlite"\n[profiles.prod.registry.options]\npaht = "r.db"\n')
    assert main(["plugins", "check"]) == 2
    err = capsys.readouterr().err
    assert "profile 'prod'" in err and "registry.options.paht: unknown option" in err
    assert "profile 'staging'" not in err
    assert main(["plugins", "check", "--profile", "staging"]) == 0
    assert "ok" in capsys.readouterr().out


def test_a_profile_that_changes_the_trainer_replaces_its_options(project: Path) -> None:
    write(project, '[pipeline]\nmodel_name = "m"\nentity = "e"\nlabels_dataset = "l"\nlabel = "y"\n'
                   'label_timestamp = "t"\n[pipeline.features]\ndataset = "f"\n'
                   '[pipeline.model]\ntrainer = "mlp"\noptions = { hidden_units = 32, epochs = 5 }\n'
                   '[profiles.team.pipeline.model]\ntrainer = "torch-module"\n'
                   'options = { module = "pkg.models:build" }\n'
                   '[profiles.quick.pipeline.model.options]\nepochs = 1\n')
    team = load_config(profile="team").pipeline.model
    assert team.trainer == "torch-module" and team.options == {"module": "pkg.models:build"}  # no hidden_units
    quick = load_config(profile="quick").pipeline.model  # same trainer: options still merge
    assert quick.trainer == "mlp" and quick.options == {"hidden_units": 32, "epochs": 1}


def test_a_profile_that_changes_the_task_replaces_the_gates_in_its_metrics_units(project: Path) -> None:
    write(project, '[pipeline]\nmodel_name = "m"\ntask = "binary"\nentity = "e"\nlabels_dataset = "l"\n'
                   'label = "y"\nlabel_timestamp = "t"\n[pipeline.features]\ndataset = "f"\n'
                   '[pipeline.gates]\nthresholds = { auc = 0.7 }\nmax_fairness_gap = 0.12\nregression_margin = 0.02\n'
                   '[profiles.spend.pipeline]\nmodel_name = "spend"\ntask = "regression"\nlabel = "v"\n'
                   '[profiles.spend.pipeline.gates]\nthresholds = { r2 = 0.1 }\n'
                   '[profiles.strict.pipeline.gates]\nthresholds = { auc = 0.8 }\n')
    spend = load_config(profile="spend").pipeline.gates  # an AUC threshold is no gate of a regression
    assert spend.thresholds == {"r2": 0.1} and spend.max_fairness_gap is None
    assert spend.regression_margin == 0.02  # task-free gates still merge
    strict = load_config(profile="strict").pipeline.gates  # same task: the tables merge as before
    assert strict.thresholds == {"auc": 0.8} and strict.max_fairness_gap == 0.12


def test_explain_names_where_each_value_came_from(tmp_path, monkeypatch, capsys) -> None:
    from loopml.cli import main

    (tmp_path / "loopml.toml").write_text(
        'project = "p"\n[storage]\nuri = "artifacts"\n[serving.options]\ntoken = "s3cret-token"\n'
        '[profiles.ci.storage]\nuri = "ci-artifacts"\n')
    monkeypatch.setenv("LOOPML__SERVING__OPTIONS__PORT", "9001")
    code = main(["config", "--config", str(tmp_path / "loopml.toml"), "--profile", "ci", "--explain", "--json"])
    printed = capsys.readouterr().out
    rows = {r["key"]: (r["value"], r["from"]) for r in json.loads(printed)}
    assert code == 0
    assert rows["project"] == ("p", "loopml.toml")
    assert rows["storage.uri"] == ("ci-artifacts", "profile ci")
    assert rows["serving.options.port"] == ("9001", "$LOOPML__SERVING__OPTIONS__PORT")
    assert rows["registry.backend"] == ("sqlite", "default")
    assert "s3cret-token" not in printed  # a secret in the file is named, never shown
