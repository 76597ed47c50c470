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


class RefineConfig(Section):
    """Note refinement after Basic Pitch's decoder (:mod:`rescored_ray.refine`): each step can be
    switched off, and each threshold is the one ``bench/note_quality.py`` measured best.
    Activations are the model's (0..1); times in ms."""

    onsets: bool = Field(True, description="Move each note's start to its attack (slow attacks, reverb).")
    onset_search_ms: float = Field(250.0, ge=0, description="How far before a note an earlier attack is looked for.")
    onset_peak: float = Field(0.3, ge=0, le=1, description="Onset activation an earlier attack peak needs...")
    onset_earlier: float = Field(
        0.8, ge=0, description="...and this fraction of the note's own onset peak (a weaker bump is another sound's)."
    )
    onset_rise: float = Field(
        0.7,
        gt=0,
        le=1,
        description="The onset is where the attack's activation first reaches this fraction of its peak.",
    )
    continuations: bool = Field(True, description="Merge or drop re-detections of a sounding pitch without an attack.")
    attack_onset: float = Field(0.7, ge=0, le=1, description="An onset activation this strong is a new attack...")
    attack_onset_low: float = Field(
        0.4, ge=0, le=1, description="...a weaker one only with the energy at the pitch rising by attack_rise_db."
    )
    attack_rise_db: float = Field(10.0, ge=0)
    merge_gap_ms: float = Field(
        60.0, ge=0, description="A re-detection this close to its note is merged; later, dropped."
    )
    tail_s: float = Field(
        3.0, ge=0, description="How long after a note of the pitch a re-detection counts as its tail."
    )
    ghosts: bool = Field(True, description="Drop octave/twelfth harmonics and sub-octaves of louder notes.")
    harmonic_ratio: float = Field(
        0.5,
        ge=0,
        description="An octave or twelfth above a sounding note is a ghost under this fraction of its level...",
    )
    subharmonic_ratio: float = Field(1.0, ge=0, description="...an octave below one, under this fraction...")
    ghost_onset: float = Field(0.8, ge=0, le=1.01, description="...unless its own onset activation reaches this.")
    vibrato: bool = Field(False, description="Join a vibrato or scoop split into neighbouring semitones into one note.")
    vibrato_window_ms: float = Field(
        250.0, gt=0, description="About one vibrato cycle: the contour is averaged over it."
    )


class StemSettings(Section):
    """How one stem's notes are read off the model: Basic Pitch's decoding thresholds and the
    refinement after it (``refine`` null: none, Basic Pitch's notes as they are). ``result.json``
    records these, per stem, under ``transcription``."""

    onset_threshold: float = Field(gt=0, lt=1)
    frame_threshold: float = Field(gt=0, lt=1)
    minimum_note_length_ms: float = Field(ge=0)
    minimum_frequency: float | None = Field(None, gt=0)
    maximum_frequency: float | None = Field(None, gt=0)
    melodia_trick: bool = True
    refine: RefineConfig | None = None


STOCK_STEM = StemSettings(onset_threshold=0.5, frame_threshold=0.3, minimum_note_length_ms=127.7, melodia_trick=True)
"""Basic Pitch's own defaults (``basic_pitch.inference.predict``), no refinement."""

STEM_KINDS: dict[str, str] = {"other": "other", "piano": "other", "guitar": "other", "vocals": "vocals", "bass": "bass"}
"""The kind of sound each stem holds; any other name (``mix``: nothing separated) is ``mix``."""

TUNED_STEMS: dict[str, StemSettings] = {
    # Piano, plucked and bowed instruments, dry and in a reverberant room (bench/note_quality.py).
    "other": StemSettings(
        onset_threshold=0.7, frame_threshold=0.3, minimum_note_length_ms=127.7, refine=RefineConfig()
    ),
    # Everything at once when nothing is separated: measured on the same renders as "other".
    "mix": StemSettings(onset_threshold=0.7, frame_threshold=0.3, minimum_note_length_ms=127.7, refine=RefineConfig()),
    # A sung line with vibrato and scoops: one voice, C2-C7; its attacks are soft, so a weaker
    # onset is already a new note, and an earlier attack is looked for only 100 ms back.
    "vocals": StemSettings(
        onset_threshold=0.6,
        frame_threshold=0.5,
        minimum_note_length_ms=127.7,
        minimum_frequency=65.0,
        maximum_frequency=2100.0,
        refine=RefineConfig(vibrato=True, onset_search_ms=100.0, onset_rise=0.8, attack_onset=0.6),
    ),
    # Bass lines: the octave above a bass note is almost always its own second harmonic.
    "bass": StemSettings(
        onset_threshold=0.5,
        frame_threshold=0.3,
        minimum_note_length_ms=127.7,
        refine=RefineConfig(harmonic_ratio=0.7, ghost_onset=0.95),
    ),
}
"""The settings ``profile: tuned`` gives each kind of stem, chosen by ``bench/note_quality.py``
(bench/RESULTS.md has the measurements and how sensitive each value is)."""


class StemOverride(Section):
    """Per-stem changes to the profile's settings; a field left null keeps the profile's value.
    A frequency of 0 removes that limit. ``refine`` changes single refinement settings."""

    onset_threshold: float | None = Field(None, gt=0, lt=1)
    frame_threshold: float | None = Field(None, gt=0, lt=1)
    minimum_note_length_ms: float | None = Field(None, ge=0)
    minimum_frequency: float | None = Field(None, ge=0)
    maximum_frequency: float | None = Field(None, ge=0)
    melodia_trick: bool | None = None
    refine: dict[str, Any] | None = Field(None, description="RefineConfig fields to change, e.g. {vibrato: true}.")

    @field_validator("refine")
    @classmethod
    def _known_refine_fields(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            RefineConfig.model_validate(value)  # unknown keys and bad values fail here, at load time
        return value

    def apply(self, base: StemSettings) -> StemSettings:
        changes: dict[str, Any] = {}
        for name in ("onset_threshold", "frame_threshold", "minimum_note_length_ms", "melodia_trick"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        for name in ("minimum_frequency", "maximum_frequency"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = value or None
        if self.refine and base.refine is not None:
            changes["refine"] = RefineConfig.model_validate({**base.refine.model_dump(), **self.refine})
        return StemSettings.model_validate({**base.model_dump(), **changes})


class TranscriptionConfig(Section):
    """Basic Pitch note transcription: which stems, and how each stem's notes are read.

    ``profile: tuned`` (the default) gives each kind of stem (vocals, bass, other, mix) the
    decoding thresholds, frequency range and note refinement measured best for it
    (:data:`TUNED_STEMS`); ``stock`` is Basic Pitch's own defaults for every stem with no
    refinement (notes identical to ``basic_pitch.inference.predict``). A threshold set here
    applies to every stem; ``per_stem`` changes single stems (by name: ``vocals``, ``other``,
    ...); ``refine: false`` keeps the profile's thresholds but switches refinement off.
    """

    stems: list[str] = Field(default_factory=lambda: ["other", "bass", "vocals"])
    profile: Literal["tuned", "stock"] = Field(
        "tuned", description="tuned: measured per stem kind; stock: Basic Pitch's."
    )
    refine: bool = Field(
        True, description="Refine the decoded notes (onsets, tails, ghosts, vibrato) as the profile says."
    )
    onset_threshold: float | None = Field(None, gt=0, lt=1, description="null: each stem's own.")
    frame_threshold: float | None = Field(None, gt=0, lt=1, description="null: each stem's own.")
    minimum_note_length_ms: float | None = Field(None, ge=0, description="null: each stem's own.")
    minimum_frequency: float | None = Field(None, ge=0, description="null: each stem's own; 0: no limit.")
    maximum_frequency: float | None = Field(None, ge=0, description="null: each stem's own; 0: no limit.")
    melodia_trick: bool | None = Field(None, description="null: each stem's own.")
    per_stem: dict[str, StemOverride] = Field(default_factory=dict, description="Changes for single stems, by name.")
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

    def for_stem(self, stem: str) -> StemSettings:
        """The settings ``stem``'s notes are read with: the profile's for its kind, then this
        section's own values, then ``per_stem[stem]``, then ``refine``."""
        kind = STEM_KINDS.get(stem, "mix")
        base = TUNED_STEMS[kind] if self.profile == "tuned" else STOCK_STEM
        top = StemOverride(
            onset_threshold=self.onset_threshold,
            frame_threshold=self.frame_threshold,
            minimum_note_length_ms=self.minimum_note_length_ms,
            minimum_frequency=self.minimum_frequency,
            maximum_frequency=self.maximum_frequency,
            melodia_trick=self.melodia_trick,
        )
        settings = top.apply(base)
        if stem in self.per_stem:
            settings = self.per_stem[stem].apply(settings)
        if not self.refine:
            settings = settings.model_copy(update={"refine": None})
        return settings


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
