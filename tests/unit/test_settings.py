"""Settings: one root, YAML files, RESCORED_<SECTION>__<FIELD> variables, refusal of typos,
the names of release 0.1 for one more release."""

import re
import warnings
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from rescored_ray.config import PipelineConfig
from rescored_ray.errors import ConfigError
from rescored_ray.settings import OTHER_VARIABLES, Settings, legacy_names, load_settings, variable_names

REPO = Path(__file__).resolve().parents[2]


def test_shipped_yaml_equals_builtin_defaults():
    assert load_settings(REPO / "configs" / "pipeline.yaml", env={}).pipeline == PipelineConfig()


@pytest.mark.parametrize("name", ["pipeline", "demo", "serve", "batch"])
def test_every_shipped_file_loads_without_deprecations(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert isinstance(load_settings(REPO / "configs" / f"{name}.yaml", env={}), Settings)


def test_env_overrides_reach_nested_fields_with_types():
    cfg = load_settings(
        env={
            "RESCORED_PIPELINE__SEPARATION__MODEL": "none",
            "RESCORED_PIPELINE__SOURCE__MAX_DURATION_S": "60",
            "RESCORED_PIPELINE__TRANSCRIPTION__STEMS": "other,bass",
            "RESCORED_PIPELINE__WRITE_STEMS": "false",
            "RESCORED_SERVICE__LEASE_S": "7.5",
            "RESCORED_SERVICE__LIMITS__JOBS_PER_WINDOW": "null",
            "RESCORED_SERVICE__SECURITY__API_TOKENS": "{alice: 0123456789abcdef0123}",
            "RESCORED_BATCH__SEPARATOR__MAX_ACTORS": "3",
            "UNRELATED": "x",
        }
    )
    assert cfg.pipeline.separation.model == "none" and not cfg.pipeline.separation.enabled
    assert cfg.pipeline.source.max_duration_s == 60.0
    assert cfg.pipeline.transcription.stems == ["other", "bass"]
    assert cfg.pipeline.write_stems is False
    assert cfg.service.lease_s == 7.5 and cfg.service.limits.jobs_per_window is None
    assert cfg.service.security.api_tokens == {"alice": "0123456789abcdef0123"}
    assert cfg.batch.separator.max_actors == 3
    assert load_settings(
        env={"RESCORED_PIPELINE__TRANSCRIPTION__STEMS": "[piano, bass]"}
    ).pipeline.transcription.stems == ["piano", "bass"]


def _other_value(model: BaseModel, field: str):
    """A valid value of ``field`` that differs from its default, where one is easy to name."""
    default = getattr(model, field)
    for candidate in (
        [not default]
        if isinstance(default, bool)
        else [default + 1, default - 1]
        if isinstance(default, int)
        else [default / 2, default * 2]
        if isinstance(default, float)
        else ["cpu", "x"]
        if isinstance(default, str)
        else [default]
    ):
        try:
            model.model_copy().__setattr__(field, candidate)  # sections validate assignments
            return candidate
        except ValueError:
            continue
    return default


def test_every_field_is_overridable_by_its_variable():
    defaults = Settings()
    checked = 0
    for name, path in variable_names().items():
        parent = defaults
        for part in path[:-1]:
            parent = getattr(parent, part)
        value = getattr(parent, path[-1])
        if isinstance(value, (BaseModel, list, dict)) or value is None:
            continue  # sections, lists and mappings: covered above
        wanted = _other_value(parent, path[-1])
        loaded = load_settings(env={name: yaml.safe_dump(wanted).removesuffix("\n...\n").strip()})
        for part in path:
            loaded = getattr(loaded, part)
        assert loaded == wanted, (name, loaded, wanted)
        checked += 1
    assert checked > 60


def test_precedence_file_then_env_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pipeline:\n  separation:\n    model: demucs_unittest\n  notation:\n    tempo_override: 90\n")
    cfg = load_settings(
        path,
        env={"RESCORED_PIPELINE__NOTATION__TEMPO_OVERRIDE": "100"},
        overrides={"pipeline": {"notation": {"key_override": "Gm"}}},
    )
    assert cfg.pipeline.separation.model == "demucs_unittest"
    assert cfg.pipeline.notation.tempo_override == 100
    assert cfg.pipeline.notation.key_override == "Gm"


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("pipeline:\n  separation:\n    modle: htdemucs\n")
    with pytest.raises(ConfigError, match="modle"):
        load_settings(path, env={})
    path.write_text("pipelin:\n  separation:\n    model: htdemucs\n")
    with pytest.raises(ConfigError, match=r"pipelin.*did you mean pipeline"):
        load_settings(path, env={})
    with pytest.raises(ConfigError):
        load_settings(env={"RESCORED_PIPELINE__SEPARATION__OVERLAP": "1.5"})


@pytest.mark.parametrize(
    "typo, closest",
    [
        ("RESCORED_SEPARATON_MODEL", "RESCORED_PIPELINE__SEPARATION__MODEL"),  # a 0.1 name, misspelt
        ("RESCORED_PIPELINE__SEPARATION__MODLE", "RESCORED_PIPELINE__SEPARATION__MODEL"),
        ("RESCORED_SERVICE__LEASE", "RESCORED_SERVICE__LEASE_S"),
        ("RESCORED_LEASE_S", "RESCORED_SERVICE__LEASE_S"),  # silently ignored in 0.1
        ("RESCORED_BATCH_MAX_RETRIES", "RESCORED_BATCH__MAX_RETRIES"),
    ],
)
def test_an_unknown_variable_is_an_error_naming_the_closest(typo, closest):
    with pytest.raises(ConfigError, match=re.escape(f"unknown environment variable {typo}; did you mean {closest}?")):
        load_settings(env={typo: "1"})


def test_variables_that_are_not_settings_are_known():
    assert load_settings(env=dict.fromkeys(OTHER_VARIABLES, "1")) == Settings()


def test_release_0_1_names_still_work_with_a_deprecation_warning():
    legacy = {
        "RESCORED_SEPARATION_MODEL": "none",
        "RESCORED_TRANSCRIPTION_STEMS": "other,bass",
        "RESCORED_DATA_DIR": "/tmp/old-name",
        "RESCORED_ALLOW_PRIVATE_NETWORKS": "1",
        "RESCORED_RATE_LIMIT_JOBS": "null",
        "RESCORED_API_TOKENS": "{bob: 0123456789abcdef0123}",
    }
    with pytest.deprecated_call() as caught:
        old = load_settings(env=legacy)
    messages = {str(w.message) for w in caught}
    assert any(
        "RESCORED_SEPARATION_MODEL is deprecated; use RESCORED_PIPELINE__SEPARATION__MODEL" in m for m in messages
    )
    assert old.pipeline.separation.model == "none" and old.pipeline.transcription.stems == ["other", "bass"]
    assert old.service.data_dir == "/tmp/old-name" and old.service.security.allow_private_networks is True
    assert old.service.limits.jobs_per_window is None and old.service.security.api_tokens == {
        "bob": "0123456789abcdef0123"
    }
    with pytest.deprecated_call():
        new = load_settings(
            env={"RESCORED_PIPELINE__SEPARATION__MODEL": "htdemucs_6s", "RESCORED_SEPARATION_MODEL": "none"}
        )
    assert new.pipeline.separation.model == "htdemucs_6s"  # the new name wins
    assert len(legacy_names()) > 30


def test_release_0_1_files_still_load_with_a_deprecation_warning(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("separation:\n  model: none\nnotation:\n  title: Old\n")
    with pytest.deprecated_call(match="belong under 'pipeline:'"):
        cfg = load_settings(old, env={})
    assert cfg.pipeline.separation.model == "none" and cfg.pipeline.notation.title == "Old"
    old.write_text("download: {concurrency: 3}\nnotation: {concurrency: 1}\npipeline: {separation: {model: none}}\n")
    with pytest.deprecated_call(match="belong under 'batch:'"):
        cfg = load_settings(old, env={})
    assert cfg.batch.download.concurrency == 3 and cfg.batch.notation.concurrency == 1
    assert cfg.pipeline.separation.model == "none"


def test_a_serve_config_document_holds_the_settings():
    cfg = load_settings(REPO / "configs" / "serve.yaml", env={})
    assert cfg.service.worker_slots == 2 and cfg.pipeline.separation.model == "htdemucs"
    document = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())["applications"][0]["args"]
    assert load_settings(document=document, env={}) == cfg
