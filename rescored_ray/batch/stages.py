"""The batch run's Ray Data stages: the pipeline's own stage methods, one song per row.

Rows carry the audio itself (decoded mix, stems) as arrays, so it moves between
stages, and between nodes, through Ray's object store, never through one node's
disk. A row that failed keeps flowing with empty arrays and its error, so one
broken entry never stops the run; transient errors are retried in place with
backoff. Every stage is a pool of actors, so what a process pays once (imports,
yt-dlp's extractors, music21's first score, a model) is paid once per actor when the
run starts, never per entry by whichever fresh worker Ray hands a task. The stages:

- :class:`AcquireAudio`    validate, download, decode (CPU).
- :class:`SeparateStems`   holds Demucs (fractional GPU).
- :class:`TranscribeStems` holds Basic Pitch (its own GPU fraction).
- :class:`WriteScore`      notation, MusicXML/MIDI/stems/preview, upload (CPU).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rescored_ray import layout, logs, metrics
from rescored_ray.batch.manifest import COLUMNS, COMPLETED, FAILED, OUTPUT_COLUMNS, STAGE_SECONDS
from rescored_ray.errors import PipelineError
from rescored_ray.pipeline import Pipeline, publish
from rescored_ray.retry import call_with_retries
from rescored_ray.settings import Settings
from rescored_ray.storage import ResultStore
from rescored_ray.timeline import Timeline
from rescored_ray.types import SAMPLE_RATE, Audio, Note

log = logging.getLogger(__name__)

RUNNING = "running"
NO_AUDIO = np.zeros((2, 0), dtype=np.float32)
NO_STEMS = np.zeros((0, 2, 0), dtype=np.float32)
NOTE_FIELDS = ("note_start", "note_end", "note_pitch", "note_velocity", "note_amplitude", "note_stem_index")


def _retrying(cfg: Settings, row: dict[str, Any], call: Callable[[], Any]) -> Any:
    batch = cfg.batch
    result, attempts = call_with_retries(
        call, max_retries=batch.max_retries, base_s=batch.backoff_base_s, max_s=batch.backoff_max_s
    )
    row["attempts"] = max(int(row.get("attempts") or 1), attempts)
    return result


def _fail(row: dict[str, Any], exc: PipelineError) -> dict[str, Any]:
    row.update(
        status=FAILED,
        error=str(exc),
        retryable=bool(exc.retryable),
        stage=exc.stage,
        attempts=max(int(row.get("attempts") or 1), exc.attempts),
    )
    log.warning(
        "entry %s failed in %s (%s): %s", row.get("id"), exc.stage, "transient" if exc.retryable else "permanent", exc
    )
    return row


def _timeline(row: dict) -> Timeline:
    """The row's stage timeline so far (its earlier stages ran in other workers), so the entry's
    result.json gets every stage; each new stage also lands in the ``rescored_stage_seconds`` histogram."""
    return Timeline([metrics.stage_listener("batch")], spans=json.loads(row.get("timeline") or "[]"))


def _worker_label() -> str:
    """Which node, process and GPU ran a stage (for the manifest and placement checks)."""
    import ray

    context = ray.get_runtime_context()
    gpus = ",".join(context.get_accelerator_ids().get("GPU", [])) or "-"
    return f"node={context.get_node_id()[:12]} pid={os.getpid()} gpu={gpus}"


# -- CPU: download + decode ---------------------------------------------------------------------


class _RowStage:
    """A CPU stage: an actor of a small fixed pool that takes one row at a time."""

    def __init__(self, config: str):
        logs.install()
        self.cfg = Settings.model_validate_json(config)
        self.pipeline = Pipeline(self.cfg.pipeline)

    def __call__(self, row: dict) -> dict:
        with logs.job_context(str(row.get("id"))):  # log lines carry the entry id (see rescored_ray.logs)
            return self.process(row)

    def process(self, row: dict) -> dict:
        raise NotImplementedError


class AcquireAudio(_RowStage):
    """Download and decode one entry; the audio goes into the row."""

    def process(self, row: dict) -> dict:
        # Every column a later stage fills exists from here on, with a value of its final type
        # ("" rather than None: a batch whose strings are all None becomes a float column, and
        # blocks of failed and running rows would then disagree about their schema).
        row = dict(
            row,
            title=row.get("title") or "",
            artist="",
            status=RUNNING,
            error="",
            retryable=False,
            stage="",
            attempts=1,
            audio=NO_AUDIO,
            stem_audio=NO_STEMS,
            stem_names="",
            separation_worker="",
            separation_precision="",
            transcription_worker="",
            timeline="[]",
            **notes_to_columns([]),
        )
        timeline = _timeline(row)

        def attempt():
            with self.pipeline.workdir(str(row["id"])) as workdir:
                return self.pipeline.acquire(row["url"], workdir, timeline=timeline)

        try:
            about, audio = _retrying(self.cfg, row, attempt)
        except PipelineError as exc:
            return _fail(row, exc)
        row.update(
            audio=audio.samples,
            title=row.get("title") or about.title or "",
            artist=about.artist or "",
            duration_s=round(audio.duration_s, 3),
            timeline=json.dumps(timeline.to_list()),
        )
        row.update({f"{stage}_s": round(seconds, 4) for stage, seconds in timeline.seconds().items()})
        return row


# -- GPU: separation and transcription ----------------------------------------------------------


class _ModelStage(_RowStage):
    """An actor of a Ray Data actor pool that holds one model for its whole life; it takes
    batches of rows (``batch_size``), a GPU's unit of work.

    A model that cannot load (weights missing offline) is raised from the first call,
    not from ``__init__``: Ray reports a failed constructor only as text, while an error
    raised by a call reaches the driver as the PipelineError itself, so the run stops
    with the loader's own message (see ``runner``) instead of Ray's traceback.
    """

    def __init__(self, config: str):
        super().__init__(config)
        self.worker = _worker_label()
        self.init_error: PipelineError | None = None
        started = time.perf_counter()
        try:
            self.load()
        except PipelineError as exc:
            log.error("%s cannot start on %s: %s", type(self).__name__, self.worker, exc)
            self.init_error = exc
        else:
            seconds = time.perf_counter() - started
            metrics.set_gauge("rescored_model_load_seconds", seconds, model=self.model_name())
            log.info("%s ready on %s in %.1f s", type(self).__name__, self.worker, seconds)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.init_error is not None:
            raise self.init_error
        rows = []
        for row in _rows(batch):
            with logs.job_context(str(row["id"])):
                rows.append(self.process(row) if row["status"] == RUNNING else row)
        return _columns(rows)

    def load(self) -> None:
        raise NotImplementedError

    def model_name(self) -> str:
        raise NotImplementedError

    def process(self, row: dict) -> dict:
        raise NotImplementedError


class SeparateStems(_ModelStage):
    """Demucs, loaded once per actor; every stem of the song goes into the row."""

    def load(self) -> None:
        from rescored_ray.separation import Separator

        self.separator = Separator(self.cfg.pipeline.separation)
        self.pipeline = Pipeline(self.cfg.pipeline, separator=self.separator)

    def model_name(self) -> str:
        return self.cfg.pipeline.separation.model

    def process(self, row: dict) -> dict:
        timeline = _timeline(row)
        audio = Audio(np.array(row["audio"], dtype=np.float32), SAMPLE_RATE)  # a writable copy for torch
        fallbacks = self.separator.cpu_fallbacks
        try:
            stems = _retrying(self.cfg, row, lambda: self.pipeline.separate(audio, timeline=timeline))
        except PipelineError as exc:
            return _fail(row, exc)
        names = list(stems)
        row.update(
            stem_audio=np.stack([stems[name].samples for name in names]),
            stem_names=",".join(names),
            separation_s=round(timeline.seconds().get("separation", 0.0), 4),
            separation_worker=self.worker,
            separation_precision=timeline.reported("separation", "precision") or "",
            timeline=json.dumps(timeline.to_list()),
        )
        if self.separator.cpu_fallbacks > fallbacks:
            metrics.inc("rescored_gpu_cpu_fallbacks_total", model=self.separator.name)
        return row


class TranscribeStems(_ModelStage):
    """Basic Pitch, loaded once per actor; the notes go into the row as parallel arrays."""

    def load(self) -> None:
        self.transcriber = self.pipeline.transcriber

    def model_name(self) -> str:
        return "basic-pitch"

    def process(self, row: dict) -> dict:
        timeline = _timeline(row)
        stems = stems_of(row)
        try:
            notes = _retrying(self.cfg, row, lambda: self.pipeline.transcribe(stems, timeline=timeline))
        except PipelineError as exc:
            return _fail(row, exc)
        row.update(notes_to_columns([n for stem_notes in notes.values() for n in stem_notes]))
        row.update(
            transcription_s=round(timeline.seconds().get("transcription", 0.0), 4),
            transcription_worker=self.worker,
            timeline=json.dumps(timeline.to_list()),
        )
        return row


# -- CPU: notation and outputs ------------------------------------------------------------------


class WriteScore(_RowStage):
    """Notate one entry, write its files to the output store; returns its manifest row.

    music21 and the score writers cost seconds on their first call in a process (0.2 s
    after), so each actor pays that once, on a tiny synthetic song, while the run fills.
    All of it runs on one thread of the actor's own: verovio renders only in the thread
    that first used it, and Ray may call an actor from other threads than its constructor's.
    """

    def __init__(self, config: str, output_uri: str, run_id: str):
        super().__init__(config)
        self.store = ResultStore(output_uri)
        self.run_id = run_id
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rescored-notation")
        self.thread.submit(self.pipeline.warm_up_notation).result()

    def __call__(self, row: dict) -> dict:
        return self.thread.submit(super().__call__, row).result()

    def process(self, row: dict) -> dict:
        if row["status"] == RUNNING:
            self._write(row)
        return manifest_row(row, self.run_id)

    def _write(self, row: dict) -> None:
        timeline = _timeline(row)
        audio = Audio(np.asarray(row["audio"], dtype=np.float32), SAMPLE_RATE)
        stems = stems_of(row)
        notes: dict[str, list[Note]] = {}
        for note in notes_from_columns(row):
            notes.setdefault(note.stem, []).append(note)

        def attempt():
            with self.pipeline.workdir(str(row["id"])) as workdir:
                result = self.pipeline.write(
                    str(row["id"]),
                    row["url"],
                    row.get("title"),
                    audio,
                    stems,
                    notes,
                    workdir / "out",
                    artist=row.get("artist") or None,
                    timeline=timeline,
                )
                files = publish(result, self.store, str(row["id"]))
            return result, files

        try:
            result, files = _retrying(self.cfg, row, attempt)
        except PipelineError as exc:
            _fail(row, exc)
            return
        row.update(output_urls(self.store, str(row["id"]), files))
        row.update(
            status=COMPLETED,
            n_notes=result.n_notes,
            key=result.key,
            tempo_bpm=result.tempo_bpm,
            time_signature=result.time_signature,
            pickup_ql=result.pickup_ql,
            separation_model=result.separation_model,
            stems=result.stems,
            notation_s=round(timeline.seconds().get("notation", 0.0), 4),
            outputs_s=round(timeline.seconds().get("outputs", 0.0), 4),
        )


def output_urls(store: ResultStore, entry_id: str, files: list[str]) -> dict[str, Any]:
    """The manifest's output columns of one entry: each kind's URL, a multi-file kind's URLs."""
    columns: dict[str, Any] = {}
    for row in layout.LAYOUT:
        urls = [store.url(f"{entry_id}/{path}") for path in layout.files_of(row.kind, files).values()]
        columns[OUTPUT_COLUMNS[row.kind]] = urls if row.multi else (urls[0] if urls else None)
    return columns


def manifest_row(row: dict, run_id: str) -> dict:
    """The light part of a row: what the manifest records (no audio, no notes)."""
    out = {name: _plain(row.get(name)) for name in COLUMNS if name in row}
    for name in ("title", "error", "stage", "separation_worker", "separation_precision", "transcription_worker"):
        out[name] = out.get(name) or None
    if out.get("status") == COMPLETED:
        out["retryable"] = None
    out["run_id"] = run_id
    for stage in STAGE_SECONDS:
        out.setdefault(f"{stage}_s", None)
    return out


# -- row helpers --------------------------------------------------------------------------------


def stems_of(row: dict) -> dict[str, Audio]:
    """The row's stems by name; the mix itself when separation is off."""
    names = [name for name in str(row.get("stem_names") or "").split(",") if name]
    if not names:
        return {"mix": Audio(np.asarray(row["audio"], dtype=np.float32), SAMPLE_RATE)}
    stems = np.asarray(row["stem_audio"], dtype=np.float32)
    return {name: Audio(stems[index], SAMPLE_RATE) for index, name in enumerate(names)}


def notes_to_columns(notes: list[Note]) -> dict[str, Any]:
    """Notes as parallel arrays (what Arrow stores well); stems by index into ``note_stems``."""
    stems = sorted({n.stem for n in notes})
    return {
        "note_stems": ",".join(stems),
        "note_stem_index": np.array([stems.index(n.stem) for n in notes], dtype=np.int8),
        "note_start": np.array([n.start_s for n in notes], dtype=np.float64),
        "note_end": np.array([n.end_s for n in notes], dtype=np.float64),
        "note_pitch": np.array([n.pitch for n in notes], dtype=np.int16),
        "note_velocity": np.array([n.velocity for n in notes], dtype=np.int16),
        "note_amplitude": np.array([n.amplitude for n in notes], dtype=np.float32),
    }


def notes_from_columns(row: dict) -> list[Note]:
    if row.get("note_start") is None:
        return []
    stems = str(row.get("note_stems") or "").split(",")
    return [
        Note(
            start_s=float(start),
            end_s=float(end),
            pitch=int(pitch),
            velocity=int(velocity),
            stem=stems[int(stem)],
            amplitude=float(amplitude),
        )
        for start, end, pitch, velocity, amplitude, stem in zip(*(row[name] for name in NOTE_FIELDS), strict=True)
    ]


def _rows(batch: dict[str, Any]) -> list[dict]:
    columns = list(batch)
    size = len(batch[columns[0]]) if columns else 0
    return [{name: batch[name][index] for name in columns} for index in range(size)]


def _columns(rows: list[dict]) -> dict[str, Any]:
    """Rows back into a batch; arrays of different shapes stay separate (ragged)."""
    names: list[str] = []
    for row in rows:
        names.extend(name for name in row if name not in names)
    batch: dict[str, Any] = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if all(isinstance(value, np.ndarray) for value in values):
            array = np.empty(len(values), dtype=object)
            for index, value in enumerate(values):  # element-wise: never let numpy broadcast them
                array[index] = value
            batch[name] = array
        else:
            batch[name] = [_plain(value) for value in values]
    return batch


def _plain(value: Any) -> Any:
    """numpy scalars/arrays of strings as Python values (Arrow and Parquet want them plain)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return [_plain(item) for item in value.tolist()]
    return value
