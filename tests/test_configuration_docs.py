"""docs/configuration.md lists every key with type, default and meaning, and is not stale."""

from __future__ import annotations

from pathlib import Path

from loopml import config, docgen

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_reference_is_up_to_date() -> None:
    assert DOC.read_text() == docgen.configuration_markdown(), (
        "docs/configuration.md is stale: run `python -m loopml.docgen > docs/configuration.md`")


def test_every_key_has_a_meaning() -> None:
    missing = [f"{cls}.{name}" for _, cls in docgen.TABLES
               for name in getattr(config, cls).model_fields
               if name not in ("root", "source_file", "profile") and not docgen.meaning(getattr(config, cls), name)]
    missing += [f"{spec.options_model.__name__}.{name}" for _, _, spec in docgen.backend_specs()
                for name in spec.options_model.model_fields if not docgen.meaning(spec.options_model, name)]
    assert missing == []


def test_the_example_configs_point_at_a_file_that_exists() -> None:
    from loopml.examples import churn

    assert "docs/configuration.md" in churn.config_text("churn") and DOC.is_file()
