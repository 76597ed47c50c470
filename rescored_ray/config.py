"""The pipeline's settings (the ``pipeline`` section of :class:`~rescored_ray.settings.Settings`).

Defaults live here, so the package works with no file at all; how files and
environment variables override them is :mod:`rescored_ray.settings`. Unknown keys are
errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(Section):
    """Where audio comes from and what is refused before any download."""

    max_duration_s: float = Field(900.0, gt=0, description="Longest accepted recording (15 min).")
    max_download_bytes: int = Field(200 * 1024 * 1024, gt=0)
    socket_timeout_s: float = Field(30.0, gt=0)
    allow_local_files: bool = True
    temp_dir: str | None = Field(None, description="Parent of per-job temp dirs (system default if unset).")


class SeparationConfig(Section):
    """Demucs source separation."""

    model: str = Field(
        "htdemucs",
        description="htdemucs | htdemucs_6s | htdemucs_ft | demucs_unittest | random:htdemucs | none",
    )
    repo: str | None = Field(None, description="Local Demucs model repo folder (offline installs).")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto = fp16 on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16/AMX), fp32 elsewhere."
    )
    segment: float | None = Field(None, gt=0, description="Chunk length in seconds (model default if unset).")
    overlap: float = Field(0.25, ge=0, lt=1)
    shifts: int = Field(0, ge=0, description="Random time shifts averaged (0 = deterministic).")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch threads; null = the CPUs Ray grants this replica/actor (rounded up), "
        "else every CPU this process may use.",
    )
    batch_chunks: int = Field(
        1,
        ge=1,
        le=64,
        description="Chunks per forward pass (1 = stock Demucs, one chunk each; more pays on GPUs, not on CPUs).",
    )

    @property
    def enabled(self) -> bool:
        return self.model.lower() != "none"


class TranscriptionConfig(Section):
    """Basic Pitch note transcription."""

    stems: list[str] = Field(default_factory=lambda: ["other", "bass", "vocals"])
    onset_threshold: float = Field(0.5, gt=0, lt=1)
    frame_threshold: float = Field(0.3, gt=0, lt=1)
    minimum_note_length_ms: float = Field(127.7, ge=0)
    minimum_frequency: float | None = Field(None, gt=0)
    maximum_frequency: float | None = Field(None, gt=0)
    melodia_trick: bool = True
    device: str = Field("auto", description="auto | cpu | cuda (onnxruntime execution provider)")
    # onnxruntime session settings; the defaults were chosen by measurement (bench/onnx_sessions.py)
    threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads; null = the CPUs Ray grants this replica/actor (rounded up), "
        "else every CPU this process may use.",
    )
    inter_op_threads: int = Field(
        1, ge=1, description="1 = the graph's nodes one after another; more = independent branches at once."
    )
    spinning: bool = Field(
        False, description="Idle pool threads spin for work: a little faster alone, CPU stolen from neighbours."
    )
    graph_optimization: Literal["basic", "extended", "all"] = "all"
    memory_arena: bool = Field(True, description="onnxruntime's CPU memory arena (buffers reused across calls).")
    batch_windows: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="2 s windows per model call (all stems of a song share calls); "
        "null = 8 on CPU, 256 on CUDA (padded to a fixed shape there).",
    )

    @field_validator("stems", mode="before")
    @classmethod
    def _split_stems(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value


class NotationConfig(Section):
    """Note cleaning, quantisation and score writing."""

    tempo_override: float | None = Field(None, gt=0, le=400)
    key_override: str | None = None
    time_signature: str = Field("auto", description="auto (detected from the music), or e.g. 3/4, 6/8, 2/2.")
    divisions_per_quarter: int = Field(
        4, ge=1, le=12, description="Finest onset grid: 4 = sixteenths (and eighth triplets), 8 = thirty-seconds."
    )
    min_note_ms: float = Field(60.0, ge=0, description="Notes shorter than this are dropped.")
    merge_gap_ms: float = Field(40.0, ge=0, description="Same-pitch fragments closer than this are merged.")
    lowest_pitch: int = Field(21, ge=0, le=127)
    highest_pitch: int = Field(108, ge=0, le=127)
    title: str | None = None


class PipelineConfig(Section):
    """Everything one transcription job needs."""

    source: SourceConfig = Field(default_factory=SourceConfig)
    separation: SeparationConfig = Field(default_factory=SeparationConfig)
    transcription: TranscriptionConfig = Field(default_factory=TranscriptionConfig)
    notation: NotationConfig = Field(default_factory=NotationConfig)
    write_stems: bool = Field(True, description="Write separated stems as FLAC next to the score.")
    write_preview: bool = Field(True, description="Render the first page of the score to SVG (verovio).")


DEFAULT_GPU_SHARE = {"separator": 0.5, "transcriber": 0.25}
"""Where GPUs exist and a config says nothing: two Demucs or four Basic Pitch replicas/actors per card."""


class ModelResources(Section):
    """The GPU share of one model holder: a Serve replica or a Ray Data actor."""

    num_gpus: float | None = Field(None, ge=0, description="null = the default share where GPUs exist, else 0.")

    def gpus(self, model: str, gpus_available: bool) -> float:
        """The configured share, else :data:`DEFAULT_GPU_SHARE` of ``model`` (``separator`` or
        ``transcriber``) on GPU clusters and 0 on CPU-only ones."""
        if self.num_gpus is not None:
            return self.num_gpus
        return DEFAULT_GPU_SHARE[model] if gpus_available else 0.0
