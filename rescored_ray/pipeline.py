"""The whole job, one song: download -> decode -> separate -> transcribe -> notate.

:class:`Pipeline` holds the loaded models (Demucs, Basic Pitch) and runs songs through
them with a progress callback ``(percent, stage, message)`` in the job design's
bands (docs/architecture.md): download 5-20, separation 20-50, transcription 50-90, musicxml 90-100. The
per-job temp dir is removed whatever happens. It imports no Ray: the Serve and batch
layers wrap it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from rescored_ray import decode, layout, notation, outputs, source
from rescored_ray.config import PipelineConfig
from rescored_ray.errors import NonRetryableError, log_unexpected, unexpected
from rescored_ray.interfaces import Checkpoint, NoteTranscriber, ProgressCallback, StemSeparator
from rescored_ray.timeline import Timeline, ran_on
from rescored_ray.transcription import stems_to_transcribe
from rescored_ray.types import SAMPLE_RATE, Audio, Note, SourceInfo

if TYPE_CHECKING:
    from rescored_ray.storage import ResultStore

log = logging.getLogger(__name__)
T = TypeVar("T")

BANDS = {
    "download": (5, 18),
    "decode": (18, 20),
    "separation": (20, 50),
    "transcription": (50, 90),
    "musicxml": (90, 100),
}


@dataclass
class PipelineResult:
    """What one finished job produced and what it learned on the way."""

    job_id: str
    source: str
    title: str | None
    duration_s: float
    output_dir: str
    outputs: list[str]
    """The files written, relative to ``output_dir`` (see :mod:`rescored_ray.layout`)."""
    n_notes: int
    n_notes_by_stem: dict[str, int]
    key: str
    tempo_bpm: float
    time_signature: str
    separation_model: str
    separation_precision: str | None
    """The precision Demucs ran in (``fp32``/``fp16``/``bf16``: what ``auto`` resolved to); None without separation."""
    stems: list[str]
    timings: dict[str, float]
    time_offset_s: float = 0.0
    """Audio time of the score's tick 0 (the first measure's start, pickup included)."""
    artist: str | None = None
    pickup_ql: float = 0.0
    """Length of the score's anacrusis in quarter notes (0: it starts on a downbeat)."""
    meter_confidence: float = 1.0
    """The meter model's probability of ``time_signature`` (1 when it was set)."""
    tempo_changes: list[tuple[int, float]] = field(default_factory=list)
    """(measure number, quarter-note BPM) of each written tempo mark."""
    transcription: dict[str, dict[str, Any]] = field(default_factory=dict)
    """How each stem's notes were read: Basic Pitch's thresholds, frequency range and the note
    refinement settings (null: none), as :meth:`TranscriptionConfig.for_stem` resolved them."""
    warnings: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    """Each stage's wall-clock span and the workers that ran it (see :mod:`rescored_ray.timeline`)."""
    notes: list[Note] = field(default_factory=list, repr=False)
    """The cleaned notes behind the score, in seconds (not written to result.json)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("notes")
        return data

    def path(self, kind: str, name: str | None = None) -> Path:
        """Where the file of ``kind`` was written, e.g. ``result.path("musicxml")``."""
        return Path(self.output_dir) / layout.file(kind, name)


class StageProgress:
    """Maps each stage's own 0..1 fraction onto its band and never goes backwards."""

    def __init__(self, callback: ProgressCallback | None):
        self.callback = callback
        self.percent = 0
        self.last: tuple[int, str, str] | None = None

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        low, high = BANDS[stage]
        percent = max(self.percent, round(low + (high - low) * max(0.0, min(1.0, fraction))))
        self.percent = percent
        update = (percent, "download" if stage == "decode" else stage, message)
        if self.callback is not None and update != self.last:  # repeats would only flood listeners
            self.last = update
            self.callback(*update)


class Pipeline:
    """Runs songs through the models it holds; models load once, on first use."""

    def __init__(
        self,
        config: PipelineConfig | None = None,
        *,
        separator: StemSeparator | None = None,
        transcriber: NoteTranscriber | None = None,
    ):
        self.config = config or PipelineConfig()
        self._separator = separator
        self._transcriber = transcriber

    # -- models ---------------------------------------------------------------------------
    @property
    def separator(self) -> StemSeparator:
        if self._separator is None:
            from rescored_ray.separation import Separator

            self._separator = Separator(self.config.separation)
        return self._separator

    @property
    def transcriber(self) -> NoteTranscriber:
        if self._transcriber is None:
            from rescored_ray.transcription import Transcriber

            self._transcriber = Transcriber(self.config.transcription)
        return self._transcriber

    def load_models(self) -> None:
        """Load everything now (service start-up) rather than on the first song."""
        if self.config.separation.enabled:
            _ = self.separator
        _ = self.transcriber

    # -- one song -------------------------------------------------------------------------
    def run(
        self,
        src: str,
        output_dir: str | Path,
        *,
        progress: ProgressCallback | None = None,
        checkpoint: Checkpoint | None = None,
        job_id: str | None = None,
        timeline: Timeline | None = None,
    ) -> PipelineResult:
        """Transcribe ``src`` (URL or local path) into ``output_dir``; raise :class:`PipelineError`.

        ``timeline`` (optional) collects the stage spans as they happen, so a caller sees
        them even when the run fails half-way.
        """
        job_id = job_id or uuid.uuid4().hex
        report = StageProgress(progress)
        check = checkpoint or (lambda: None)
        timeline = Timeline() if timeline is None else timeline

        with self.workdir(job_id) as workdir:
            about, audio = self.acquire(src, workdir, report=report, checkpoint=check, timeline=timeline)
            check()
            stems = self.separate(audio, report=report, checkpoint=check, timeline=timeline)
            check()
            notes = self.transcribe(stems, report=report, timeline=timeline)
            check()
            result = self.write(
                job_id,
                src,
                about.title,
                audio,
                stems,
                notes,
                Path(output_dir),
                artist=about.artist,
                report=report,
                timeline=timeline,
            )
        report("musicxml", 1.0, "Transcription complete")
        return result

    # -- the stages, each callable on its own (the batch path runs them on different workers)
    def acquire(
        self,
        src: str,
        workdir: Path,
        *,
        report: StageProgress | None = None,
        checkpoint: Checkpoint | None = None,
        timeline: Timeline | None = None,
    ) -> tuple[SourceInfo, Audio]:
        """Validate, download (into ``workdir``) and decode ``src``: what the source says about it, and the audio."""
        cfg = self.config
        report = report or StageProgress(None)
        timeline = Timeline() if timeline is None else timeline
        report("download", 0.0, "Validating source")
        with timeline.stage("download"):
            parsed = _in_stage("source", lambda: source.parse_source(src, cfg.source))
            fetched = _in_stage(
                "download",
                lambda: source.fetch(
                    parsed, workdir, cfg.source, progress=lambda f: report("download", f, "Downloading audio")
                ),
            )
        if checkpoint is not None:
            checkpoint()
        report("decode", 0.0, "Decoding audio")
        with timeline.stage("decode"):
            audio = _in_stage(
                "decode", lambda: decode.decode_audio(fetched.path, max_duration_s=cfg.source.max_duration_s)
            )
        if parsed.is_remote:
            fetched.path.unlink(missing_ok=True)  # the decoded array is all we need now
        report("decode", 1.0, f"Decoded {audio.duration_s:.1f} s of audio")
        return SourceInfo(title=fetched.title, artist=fetched.artist), audio

    def separate(
        self,
        audio: Audio,
        *,
        report: StageProgress | None = None,
        checkpoint: Checkpoint | None = None,
        timeline: Timeline | None = None,
    ) -> dict[str, Audio]:
        """Stems of ``audio`` (``{"mix": audio}`` when separation is off)."""
        report = report or StageProgress(None)
        timeline = Timeline() if timeline is None else timeline
        if not self.config.separation.enabled or self.config.transcription.stems == ["mix"]:
            report("separation", 1.0, "Separation off: transcribing the mix")
            return {"mix": audio}
        report("separation", 0.0, f"Separating stems with {self.config.separation.model}")
        with timeline.stage("separation") as span:
            stems = _in_stage(
                "separation",
                lambda: self.separator.separate(
                    audio, progress=lambda f: report("separation", f, "Separating stems"), checkpoint=checkpoint
                ),
            )
            span.workers = ran_on(self.separator)
        return stems

    def transcribe(
        self, stems: dict[str, Audio], *, report: StageProgress | None = None, timeline: Timeline | None = None
    ) -> dict[str, list[Note]]:
        """Notes of each wanted pitched stem (the mix when nothing was separated)."""
        report = report or StageProgress(None)
        timeline = Timeline() if timeline is None else timeline
        report("transcription", 0.0, "Transcribing notes")
        wanted = self.config.transcription.stems if "mix" not in stems else ["mix"]
        missing = [name for name in wanted if name not in stems]
        if missing and "mix" not in stems:
            log.warning(
                "stems %s not produced by %s; available: %s", missing, self.config.separation.model, list(stems)
            )
            if not stems_to_transcribe(stems, wanted):  # an empty score would hide the mistake
                raise NonRetryableError(
                    f"none of the requested stems {wanted} is produced by {self.config.separation.model} "
                    f"(it produces {', '.join(stems)}; drums are never transcribed)",
                    stage="transcription",
                )
        with timeline.stage("transcription") as span:
            notes = _in_stage(
                "transcription",
                lambda: self.transcriber.transcribe_stems(
                    stems, wanted, progress=lambda f, name: report("transcription", f, f"Transcribed {name}")
                ),
            )
            span.workers = ran_on(self.transcriber)
        return notes

    def warm_up_notation(self) -> float:
        """Notate and write a tiny synthetic song; return the seconds it took.

        music21, numba's beat kernels and verovio cost seconds on their first call in a process
        (0.2 s after): a process that will notate pays that here, before its first real song and
        outside that song's time limit. Call it on the thread that will notate (verovio renders
        only in the thread that first used it). A failure is logged, not raised: a cold song is
        slower, never wrong.
        """
        started = time.perf_counter()
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
        audio = Audio(np.stack([tone, tone]), SAMPLE_RATE)
        notes = {"other": [Note(0.5 * i, 0.5 * i + 0.4, 60 + 2 * i, 80, "other") for i in range(4)]}
        try:
            with tempfile.TemporaryDirectory(prefix="rescored_warmup_") as folder:
                self.write("warm-up", "warm-up", None, audio, {"other": audio}, notes, Path(folder))
        except Exception as exc:  # whatever it is, the first real song meets it too, and reports it
            log.warning("notation warm-up failed: %s", exc)
        seconds = time.perf_counter() - started
        log.info("notation warmed up in %.1f s", seconds)
        return seconds

    def write(
        self,
        job_id: str,
        src: str,
        title: str | None,
        audio: Audio,
        stems: dict[str, Audio],
        notes: dict[str, list[Note]],
        output_dir: Path,
        *,
        artist: str | None = None,
        report: StageProgress | None = None,
        timeline: Timeline | None = None,
    ) -> PipelineResult:
        """Notate ``notes`` and write the score (MusicXML, MIDI, PDF, page SVGs), stems and result.json."""
        cfg = self.config
        report = report or StageProgress(None)
        timeline = Timeline() if timeline is None else timeline
        output_dir = Path(output_dir)
        report("musicxml", 0.0, "Generating MusicXML")
        written: list[str] = []

        def target(kind: str, name: str | None = None) -> Path:
            written.append(layout.file(kind, name))
            return output_dir / written[-1]

        with timeline.stage("notation"):
            notated = _in_stage(
                "notation",
                lambda: notation.notate(
                    notes, cfg.notation, audio=audio.samples, sample_rate=audio.sample_rate, title=title, artist=artist
                ),
            )
            output_dir.mkdir(parents=True, exist_ok=True)
            score_file = target("musicxml")
            with outputs.atomic_path(score_file) as tmp:
                _in_stage("notation", lambda: notation.write_musicxml(notated.score, tmp))
            with outputs.atomic_path(target("midi")) as tmp:
                _in_stage("notation", lambda: notation.write_midi(notated.score, tmp))
            cleaned = [n for stem_notes in notated.notes.values() for n in stem_notes]
            outputs.write_notes_csv(target("notes"), cleaned)
        report("musicxml", 0.6, "Writing stems and pages")
        warnings = list(notated.warnings)
        with timeline.stage("outputs"):
            if cfg.write_stems and "mix" not in stems:
                for name, stem in stems.items():
                    outputs.write_flac(target("stems", name), stem)
            if cfg.write_preview:
                try:
                    pages = notation.render_pages(score_file)
                    for number, svg in enumerate(pages, start=1):
                        outputs.write_text(target("pages", str(number)), svg)
                    outputs.write_text(target("preview"), pages[0])
                    with outputs.atomic_path(target("pdf")) as tmp:
                        notation.write_pdf(pages, tmp)
                except Exception as exc:  # pictures are a convenience, never a reason to fail the job
                    warnings.append(f"pages not rendered: {exc}")
        timings = {k: round(v, 4) for k, v in timeline.seconds().items()}
        result = PipelineResult(
            job_id=job_id,
            source=src,
            title=title,
            artist=artist,
            duration_s=round(audio.duration_s, 3),
            output_dir=str(output_dir),
            outputs=[],
            n_notes=notated.n_notes,
            n_notes_by_stem=dict(notated.n_notes_by_stem),
            key=notated.key,
            tempo_bpm=round(float(notated.tempo_bpm), 2),
            time_signature=notated.time_signature,
            separation_model=cfg.separation.model,
            separation_precision=timeline.reported("separation", "precision"),
            stems=sorted(stems),
            timings=timings,
            time_offset_s=round(notated.time_offset_s, 4),
            pickup_ql=notated.pickup_ql,
            meter_confidence=notated.meter_confidence,
            tempo_changes=list(notated.tempo_changes),
            transcription={stem: cfg.transcription.for_stem(stem).model_dump() for stem in notes},
            warnings=warnings,
            timeline=timeline.to_list(),
            notes=cleaned,
        )
        result.outputs = sorted([*written, layout.file("result")])
        outputs.write_json(output_dir / layout.file("result"), result.to_dict())
        return result

    @contextmanager
    def workdir(self, job_id: str) -> Iterator[Path]:
        """A private temp dir for one job, removed whatever happens."""
        parent = self.config.source.temp_dir
        if parent:
            Path(parent).mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"rescored_{job_id[:32]}_", dir=parent))
        try:
            yield workdir
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def _in_stage(stage: str, call: Callable[[], T]) -> T:
    """Run ``call``; an exception nobody anticipated becomes this stage's error by the one
    rule of :func:`rescored_ray.errors.unexpected` (retryable, traceback logged once)."""
    try:
        return call()
    except Exception as exc:
        log_unexpected(exc, stage)
        error = unexpected(exc, stage)
        if error is exc:
            raise
        raise error from exc


def publish(result: PipelineResult, store: ResultStore, prefix: str) -> list[str]:
    """Upload a finished job's folder to ``store`` under ``prefix``; returns its ``outputs``.

    ``result.json`` is rewritten first so that its ``output_dir`` names where the files now
    live (``store.url(prefix)``), not the worker's temp folder they were written in.
    """
    local = Path(result.output_dir)
    published = result.to_dict()
    published["output_dir"] = store.url(prefix)
    outputs.write_json(local / layout.file("result"), published)
    store.put_dir(local, prefix)
    return result.outputs
