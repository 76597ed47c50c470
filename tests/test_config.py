"""Config: defaults, YAML, environment overrides, and refusal of typos."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from rescored_ray.config import PipelineConfig, env_overrides, load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_yaml_equals_builtin_defaults():
    assert load_config(REPO / "configs" / "pipeline.yaml", env={}) == PipelineConfig()


def test_env_overrides_reach_nested_fields_with_types():
    cfg = load_config(env={
        "RESCORED_SEPARATION_MODEL": "none",
        "RESCORED_SOURCE_MAX_DURATION_S": "60",
        "RESCORED_TRANSCRIPTION_STEMS": "other,bass",
        "RESCORED_WRITE_STEMS": "false",
        "UNRELATED": "x",
    })
    assert cfg.separation.model == "none" and not cfg.separation.enabled
    assert cfg.source.max_duration_s == 60.0
    assert cfg.transcription.stems == ["other", "bass"]
    assert cfg.write_stems is False


def test_precedence_file_then_env_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("separation:\n  model: demucs_unittest\nnotation:\n  tempo_override: 90\n")
    cfg = load_config(path, env={"RESCORED_NOTATION_TEMPO_OVERRIDE": "100"}, overrides={"notation": {"key_override": "Gm"}})
    assert cfg.separation.model == "demucs_unittest"
    assert cfg.notation.tempo_override == 100
    assert cfg.notation.key_override == "Gm"


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("separation:\n  modle: htdemucs\n")
    with pytest.raises(ValidationError, match="modle"):
        load_config(path, env={})
    with pytest.raises(ValidationError):
        load_config(env={"RESCORED_SEPARATION_OVERLAP": "1.5"})


def test_unknown_env_names_are_ignored_not_misrouted():
    assert env_overrides({"RESCORED_NOPE_FIELD": "1", "RESCORED_SEPARATION_NOPE": "2"}) == {}
