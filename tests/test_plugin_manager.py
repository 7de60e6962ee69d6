"""Plugin loading rules: entry points, switches, strictness, clashes, misspellings, isolation."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from fake_dists import install_fake_dist

from loopml.errors import PluginError, UnknownBackendError
from loopml.plugins import build_plugin_manager, get_plugin_manager, hookimpl, reset_plugin_manager
from loopml.specs import BackendSpec
from loopml.testing import HookRecorder, fresh_plugin_manager, registered_plugin

GOOD = """
from loopml.plugins import hookimpl
from loopml.specs import BackendSpec

def make(options, ctx):
    return "acme-store"

@hookimpl
def loopml_artifact_stores():
    return [BackendSpec("acme", make, uri_schemes=("acme",))]
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield site
    for name in ("acme_plugin", "broken_plugin", "other_plugin", "typo_plugin", "twin_plugin"):
        sys.modules.pop(name, None)


def test_builtin_backends_are_listed_with_their_plugin() -> None:
    manager = fresh_plugin_manager()
    builtin = manager.plugins()[0]
    assert builtin.name == "loopml" and builtin.source == "builtin"
    assert {"artifact_store:local", "tracker:local", "registry:sqlite"} <= set(builtin.backends)


def test_entry_point_plugin_is_loaded_with_its_distribution(site: Path) -> None:
    install_fake_dist(site, "acme-loopml", {"acme_plugin": GOOD}, {"acme": "acme_plugin"})
    manager = build_plugin_manager()
    info = {p.name: p for p in manager.plugins()}["acme"]
    assert (info.source, info.distribution, info.version) == ("entrypoint", "acme-loopml", "1.0")
    assert manager.store_for_scheme("acme").name == "acme"


def test_load_and_disable_switches(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_dist(site, "acme-loopml", {"acme_plugin": GOOD}, {"acme": "acme_plugin"})
    monkeypatch.setenv("LOOPML_DISABLE_PLUGINS", "acme")
    assert "acme" not in {p.name for p in build_plugin_manager().plugins()}
    monkeypatch.delenv("LOOPML_DISABLE_PLUGINS")
    monkeypatch.setenv("LOOPML_LOAD_PLUGINS", "")
    assert "acme" not in {p.name for p in build_plugin_manager().plugins()}
    monkeypatch.setenv("LOOPML_LOAD_PLUGINS", "acme")
    assert "acme" in {p.name for p in build_plugin_manager().plugins()}


def test_plugin_that_fails_to_import_warns_naming_its_distribution_or_fails_in_strict_mode(
    site: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install_fake_dist(site, "broken-dist", {"broken_plugin": "import not_a_real_module_xyz\n"},
                      {"broken": "broken_plugin"})
    with caplog.at_level(logging.WARNING):
        manager = build_plugin_manager()
    assert "broken-dist" in caplog.text and "LOOPML_DISABLE_PLUGINS=broken" in caplog.text
    assert manager.problems[0].distribution == "broken-dist"
    assert "loopml" in {p.name for p in manager.plugins()}  # the rest still works
    monkeypatch.setenv("LOOPML_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"broken-dist"):
        build_plugin_manager()


def test_two_plugins_claiming_one_backend_name_is_an_error_naming_both(site: Path) -> None:
    other = GOOD.replace('uri_schemes=("acme",)', 'uri_schemes=("acme2",)')
    install_fake_dist(site, "acme-loopml", {"acme_plugin": GOOD}, {"acme": "acme_plugin"})
    install_fake_dist(site / "2", "other-loopml", {"other_plugin": other}, {"other": "other_plugin"})
    manager = build_plugin_manager()
    with pytest.raises(PluginError, match=r"'acme'.*'other'|'other'.*'acme'") as info:
        manager.catalogue()
    assert "artifact_store backend 'acme'" in str(info.value)


def test_misspelled_hook_is_rejected_naming_plugin_hook_and_fix() -> None:
    class Typo:
        @hookimpl
        def loopml_after_promoton(self, event):
            pass

    with pytest.raises(PluginError) as info:
        fresh_plugin_manager(Typo())
    msg = str(info.value)
    assert "'Typo'" in msg and "loopml_after_promoton" in msg and "loopml_after_promotion" in msg


def test_hook_with_wrong_arguments_is_rejected() -> None:
    class BadArgs:
        @hookimpl
        def loopml_after_promotion(self, evnt):
            pass

    with pytest.raises(PluginError, match=r"BadArgs"):
        fresh_plugin_manager(BadArgs())


def test_a_raising_lifecycle_hook_is_recorded_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Exploding:
        @hookimpl
        def loopml_after_promotion(self, event):
            raise RuntimeError("chat service down")

    recorder = HookRecorder()
    manager = fresh_plugin_manager(recorder, Exploding())
    with caplog.at_level(logging.WARNING):
        failures = manager.notify("loopml_after_promotion", event="E")
    assert recorder.named("loopml_after_promotion") == [{"event": "E"}]
    assert len(failures) == 1 and failures[0].plugin == "Exploding"
    assert "chat service down" in caplog.text and "loopml_after_promotion" in caplog.text


def test_registration_hook_that_raises_is_skipped_with_a_warning_or_fails_strictly() -> None:
    class BadRegistration:
        @staticmethod
        @hookimpl
        def loopml_trackers():
            raise RuntimeError("boom")

    lenient = fresh_plugin_manager(BadRegistration(), strict=False)
    assert "local" in lenient.catalogue()["tracker"]
    assert "BadRegistration" in lenient.problems[0].error
    with pytest.raises(PluginError, match=r"BadRegistration.*loopml_trackers"):
        fresh_plugin_manager(BadRegistration(), strict=True).catalogue()


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(UnknownBackendError, match=r"unknown tracker 'locl' \(did you mean 'local'\?\); "
                       r"choose one of: local"):
        fresh_plugin_manager().backend("tracker", "locl")


def test_in_process_registration_and_cache() -> None:
    class InHouse:
        @hookimpl
        def loopml_trackers(self):
            return [BackendSpec("inhouse", lambda o, c: object())]

    manager = get_plugin_manager()
    assert manager is get_plugin_manager()  # cached
    with registered_plugin(manager, InHouse(), "inhouse"):
        assert manager.backend("tracker", "inhouse").name == "inhouse"
    with pytest.raises(UnknownBackendError):
        manager.backend("tracker", "inhouse")
    reset_plugin_manager()
    assert get_plugin_manager() is not manager


def test_notify_rejects_non_lifecycle_hooks() -> None:
    with pytest.raises(PluginError, match=r"not a lifecycle hook"):
        fresh_plugin_manager().notify("loopml_trackers")


def test_project_local_plugins_named_in_config_are_loaded(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from loopml.context import Workspace

    (project / "team_hooks.py").write_text(
        "from loopml.plugins import hookimpl\n"
        "SEEN = []\n"
        "@hookimpl\n"
        "def loopml_after_promotion(event):\n"
        "    SEEN.append(event)\n")
    monkeypatch.syspath_prepend(str(project))
    (project / "loopml.toml").write_text('plugins = ["team_hooks"]\n')
    ws = Workspace.open()
    info = {p.name: p for p in ws.manager.plugins()}["team_hooks"]
    assert info.source == "local" and info.hooks == ("loopml_after_promotion",)
    ws.notify("loopml_after_promotion", event="E")
    assert sys.modules["team_hooks"].SEEN == ["E"]
    (project / "loopml.toml").write_text('plugins = ["no_such_module"]\n')
    with pytest.raises(PluginError, match=r"'no_such_module' .*config key 'plugins'"):
        Workspace.open()


def test_pytest_fixtures_for_plugin_authors(loopml_plugins, loopml_hook_recorder) -> None:
    assert "hook-recorder" in {p.name for p in loopml_plugins.plugins()}
    loopml_plugins.notify("loopml_on_error", stage="train", error=ValueError("x"))
    assert loopml_hook_recorder.named("loopml_on_error")[0]["stage"] == "train"


@pytest.mark.subprocess
def test_listing_plugins_imports_no_vendor_sdk() -> None:
    import subprocess

    script = ("import sys, json; from loopml.plugins import build_plugin_manager\n"
              "m = build_plugin_manager(); m.catalogue(); m.plugins()\n"
              "print(json.dumps(sorted(n for n in ('torch', 'mlflow', 'wandb', 'boto3', 'feast', 'ts', 'prefect')"
              " if n in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


TYPO = """
from loopml.plugins import hookimpl

@hookimpl
def loopml_after_promoton(event, context):
    pass
"""


def test_an_installed_plugin_with_a_misspelled_hook_is_isolated_naming_its_distribution(
        site: Path, project: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from loopml.cli import main

    install_fake_dist(site, "typo-dist", {"typo_plugin": TYPO}, {"typo": "typo_plugin"})
    install_fake_dist(site / "2", "acme-loopml", {"acme_plugin": GOOD}, {"acme": "acme_plugin"})
    manager = build_plugin_manager()
    assert {"loopml", "acme"} <= {p.name for p in manager.plugins()}
    assert "typo" not in {p.name for p in manager.plugins()}
    [problem] = [p for p in manager.problems if p.plugin == "typo"]
    assert problem.distribution == "typo-dist"
    assert "loopml_after_promoton" in problem.error and "did you mean 'loopml_after_promotion'" in problem.error
    reset_plugin_manager()
    assert main(["models", "list", "--json"]) == 0  # every command still works in every project
    capsys.readouterr()
    monkeypatch.setenv("LOOPML_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"typo-dist"):
        build_plugin_manager()


def test_two_distributions_with_one_plugin_name_are_reported_naming_both(site: Path) -> None:
    install_fake_dist(site, "acme-loopml", {"acme_plugin": GOOD}, {"acme": "acme_plugin"})
    install_fake_dist(site / "2", "acme-fork", {"twin_plugin": GOOD}, {"acme": "twin_plugin"})
    manager = build_plugin_manager()
    [problem] = [p for p in manager.problems if p.plugin == "acme"]
    assert "acme-loopml" in problem.error and "acme-fork" in problem.error and "Uninstall" in problem.error
    assert {p.name: p for p in manager.plugins()}["acme"].distribution in ("acme-loopml", "acme-fork")


def test_an_unknown_name_in_the_plugin_switches_is_reported_with_a_suggestion(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_dist(site, "acme-loopml", {"acme_plugin": GOOD}, {"acme": "acme_plugin"})
    monkeypatch.setenv("LOOPML_DISABLE_PLUGINS", "acmee")
    manager = build_plugin_manager()
    [problem] = [p for p in manager.problems if p.plugin == "acmee"]
    assert "LOOPML_DISABLE_PLUGINS names plugin 'acmee', which is not installed" in problem.error
    assert "did you mean 'acme'?" in problem.error
    assert "acme" in {p.name for p in manager.plugins()}  # a typo disables nothing


def test_a_backend_of_a_disabled_plugin_is_reported_as_disabled_not_unknown(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_dist(site, "acme-loopml", {"acme_plugin": GOOD}, {"acme": "acme_plugin"})
    monkeypatch.setenv("LOOPML_DISABLE_PLUGINS", "acme")
    manager = build_plugin_manager()
    with pytest.raises(UnknownBackendError, match=r"artifact store 'acme' comes from plugin 'acme' "
                       r"\(distribution 'acme-loopml'\), which is disabled by LOOPML_DISABLE_PLUGINS"):
        manager.backend("artifact_store", "acme")
    with pytest.raises(UnknownBackendError, match=r"URI scheme 'acme' comes from plugin 'acme'.*disabled"):
        manager.store_for_scheme("acme")
    monkeypatch.setenv("LOOPML_DISABLE_PLUGINS", "loopml")
    with pytest.raises(UnknownBackendError, match=r"tracker 'local' comes from plugin 'loopml'.*disabled"):
        build_plugin_manager().backend("tracker", "local")


def test_a_project_can_disable_or_select_installed_plugins_in_loopml_toml(site: Path, tmp_path: Path) -> None:
    from loopml.context import Workspace

    install_fake_dist(site, "acme-loopml", {"acme_plugin": GOOD}, {"acme": "acme_plugin"})
    reset_plugin_manager()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "loopml.toml").write_text('project = "a"\ndisable_plugins = ["acme"]\n')
    (tmp_path / "b" / "loopml.toml").write_text('project = "b"\nload_plugins = ["acme"]\n')
    a, b = Workspace.open(tmp_path / "a"), Workspace.open(tmp_path / "b")
    assert "acme" not in {p.name for p in a.manager.plugins()}
    assert {p.name for p in b.manager.plugins()} >= {"loopml", "acme"}
    assert not {"s3", "mlflow", "wandb"} & {p.name for p in b.manager.plugins()}  # only what it selected
    with pytest.raises(UnknownBackendError, match=r"disabled by loopml.toml disable_plugins"):
        a.manager.backend("artifact_store", "acme")


def test_wrapper_hookimpls_run_around_lifecycle_hooks_and_every_hook_gets_the_project(project: Path) -> None:
    from loopml.context import Workspace

    seen: list[str] = []

    class Timing:
        @hookimpl(wrapper=True)
        def loopml_after_promotion(self, event, context):
            seen.append(f"before {event} in {context.project}")
            result = yield
            seen.append("after")
            return result

    class Exploding:
        @hookimpl
        def loopml_after_promotion(self, event):
            seen.append("exploding")
            raise RuntimeError("chat service down")

    recorder = HookRecorder()
    (project / "loopml.toml").write_text('project = "shop"\n')
    ws = Workspace.open(manager=fresh_plugin_manager(recorder, Timing(), Exploding()))
    failures = ws.notify("loopml_after_promotion", event="E")
    assert seen == ["before E in shop", "exploding", "after"]
    assert [f.plugin for f in failures] == ["Exploding"]
    assert recorder.named("loopml_after_promotion") == [{"event": "E"}]  # the others still ran
    [(_, context)] = recorder.contexts
    assert (context.project, context.root, context.config.project) == ("shop", project.resolve(), "shop")


def test_a_factory_that_builds_the_wrong_thing_fails_when_built_naming_plugin_and_verbs(project: Path) -> None:
    from loopml.context import Workspace

    class Sloppy:
        @hookimpl
        def loopml_trackers(self):
            return [BackendSpec("sloppy", lambda options, ctx: "not a tracker")]

    (project / "loopml.toml").write_text('[trackers.sloppy]\n')
    ws = Workspace.open(manager=fresh_plugin_manager(Sloppy()))
    with pytest.raises(PluginError, match=r"trackers.sloppy: the tracker backend 'sloppy' of plugin 'Sloppy' "
                       r"built a str, which lacks end_run, log_artifact, log_metrics, log_params, name"):
        ws.trackers  # noqa: B018
