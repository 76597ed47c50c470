"""One typed configuration for the CLI, Serve and batch paths.

Defaults live here, so the package works with no file at all. A YAML file
(``configs/pipeline.yaml``) overrides them, and ``RESCORED_<SECTION>_<FIELD>``
environment variables override the file, e.g. ``RESCORED_SEPARATION_MODEL=none``.
Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_PREFIX = "RESCORED_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    """Where audio comes from and what is refused before any download."""

    max_duration_s: float = Field(900.0, gt=0, description="Longest accepted recording (15 min).")
    max_download_bytes: int = Field(200 * 1024 * 1024, gt=0)
    socket_timeout_s: float = Field(30.0, gt=0)
    allow_local_files: bool = True
    temp_dir: str | None = Field(None, description="Parent of per-job temp dirs (system default if unset).")


class SeparationConfig(_Section):
    """Demucs source separation."""

    model: str = Field(
        "htdemucs",
        description="htdemucs | htdemucs_6s | htdemucs_ft | demucs_unittest | random:htdemucs | none",
    )
    repo: str | None = Field(None, description="Local Demucs model repo folder (offline installs).")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto = fp16 on CUDA, fp32 on CPU."
    )
    segment: float | None = Field(None, gt=0, description="Chunk length in seconds (model default if unset).")
    overlap: float = Field(0.25, ge=0, lt=1)
    shifts: int = Field(0, ge=0, description="Random time shifts averaged (0 = deterministic).")
    batch_chunks: int = Field(
        1, ge=1, le=64,
        description="Chunks per forward pass (1 = stock Demucs, one chunk each; more pays on GPUs, not on CPUs).")

    @property
    def enabled(self) -> bool:
        return self.model.lower() != "none"


class TranscriptionConfig(_Section):
    """Basic Pitch note transcription."""

    stems: list[str] = Field(default_factory=lambda: ["other", "bass", "vocals"])
    onset_threshold: float = Field(0.5, gt=0, lt=1)
    frame_threshold: float = Field(0.3, gt=0, lt=1)
    minimum_note_length_ms: float = Field(127.7, ge=0)
    minimum_frequency: float | None = Field(None, gt=0)
    maximum_frequency: float | None = Field(None, gt=0)
    melodia_trick: bool = True
    device: str = Field("auto", description="auto | cpu | cuda (onnxruntime execution provider)")

    @field_validator("stems", mode="before")
    @classmethod
    def _split_stems(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value


class NotationConfig(_Section):
    """Note cleaning, quantisation and score writing."""

    tempo_override: float | None = Field(None, gt=0, le=400)
    key_override: str | None = None
    time_signature: str = "4/4"
    divisions_per_quarter: int = Field(4, ge=1, le=12, description="Quantisation grid (4 = sixteenths).")
    min_note_ms: float = Field(60.0, ge=0, description="Notes shorter than this are dropped.")
    merge_gap_ms: float = Field(40.0, ge=0, description="Same-pitch fragments closer than this are merged.")
    lowest_pitch: int = Field(21, ge=0, le=127)
    highest_pitch: int = Field(108, ge=0, le=127)
    title: str | None = None


class PipelineConfig(_Section):
    """Everything one transcription job needs."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    separation: SeparationConfig = Field(default_factory=SeparationConfig)
    transcription: TranscriptionConfig = Field(default_factory=TranscriptionConfig)
    notation: NotationConfig = Field(default_factory=NotationConfig)
    write_stems: bool = Field(True, description="Write separated stems as FLAC next to the score.")
    write_preview: bool = Field(True, description="Render the first page of the score to SVG (verovio).")


DEFAULT_GPU_SHARE = {"separator": 0.5, "transcriber": 0.25}
"""Where GPUs exist and a config says nothing: two Demucs or four Basic Pitch replicas/actors per card."""


def gpu_share(name: str, configured: float | None, gpus_available: bool) -> float:
    """The GPU fraction of one model replica/actor (``separator`` or ``transcriber``): the
    configured value, else :data:`DEFAULT_GPU_SHARE` on GPU clusters and 0 on CPU-only ones."""
    if configured is not None:
        return configured
    return DEFAULT_GPU_SHARE[name] if gpus_available else 0.0


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def env_overrides(env: Mapping[str, str], model: type[BaseModel] = PipelineConfig) -> dict:
    """Turn ``RESCORED_SECTION_FIELD=value`` variables into a nested dict.

    Values are parsed as YAML scalars, so ``true``, ``12`` and ``null`` get their types.
    """
    result: dict = {}
    for raw_key, raw_value in env.items():
        if not raw_key.startswith(ENV_PREFIX):
            continue
        path = _env_path(raw_key[len(ENV_PREFIX):].lower(), model)
        if path is None:
            continue
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw_value) if raw_value != "" else None
    return result


def _env_path(name: str, model: type[BaseModel]) -> list[str] | None:
    fields = model.model_fields
    if name in fields:
        return [name]
    for field_name, info in fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and name.startswith(field_name + "_"):
            rest = _env_path(name[len(field_name) + 1:], annotation)
            if rest is not None:
                return [field_name, *rest]
    return None


JOB_OPTIONS = {
    "separation": ("separation", "model"),
    "stems": ("transcription", "stems"),
    "tempo_override": ("notation", "tempo_override"),
    "key_override": ("notation", "key_override"),
    "tempo": ("notation", "tempo_override"),
    "key": ("notation", "key_override"),
}
"""Per-job options (SDK keywords, CLI flags, the service's ``options``) and the field each sets."""


def options_to_overrides(options: Mapping[str, Any]) -> dict:
    """Job options as nested config overrides; unset (None/empty) options change nothing."""
    overrides: dict = {}
    for name, value in options.items():
        if name not in JOB_OPTIONS:
            raise TypeError(f"unknown option {name!r}; expected one of {', '.join(sorted(JOB_OPTIONS))}")
        if value is None or value == "" or value == []:
            continue
        section, field = JOB_OPTIONS[name]
        overrides.setdefault(section, {})[field] = value
    return overrides


def with_options(base: PipelineConfig, options: Mapping[str, Any]) -> PipelineConfig:
    """``base`` with one job's options applied."""
    return PipelineConfig.model_validate(_deep_merge(base.model_dump(), options_to_overrides(options)))


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """A YAML file whose top level must be a mapping (an empty file is an empty one)."""
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return loaded


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> PipelineConfig:
    """Defaults, then the YAML file, then environment variables, then ``overrides``."""
    data: dict = {}
    if path is not None:
        loaded = read_yaml_mapping(path)
        data = loaded.get("pipeline", loaded)
    data = _deep_merge(data, env_overrides(os.environ if env is None else env))
    if overrides:
        data = _deep_merge(data, overrides)
    return PipelineConfig.model_validate(data)
