"""A whole batch run: expand the inputs, stream them through Ray Data, keep the manifest.

    inputs -> entries -> [download+decode: CPU actors] -> [Demucs: GPU actors]
           -> [Basic Pitch: GPU actors] -> [notation + upload: CPU actors] -> manifest

The stages are the pipeline's own methods (:mod:`rescored_ray.batch.stages`); this
module only wires them into one streaming Dataset, sized by the plan for this cluster
(:mod:`rescored_ray.batch.plan`), skips entries a previous run finished, and writes
manifest parts as rows come back.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rescored_ray import metrics
from rescored_ray.batch.inputs import BatchEntry, InputFailure, expand_inputs, safe_id
from rescored_ray.batch.manifest import COMPLETED, FAILED, MANIFEST, SKIPPED, STAGE_SECONDS, Manifest
from rescored_ray.batch.progress import Tracker
from rescored_ray.errors import PipelineError
from rescored_ray.settings import Settings
from rescored_ray.storage import ResultStore

log = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    """What a run did; ``line()`` is the one-line report printed at the end."""

    run_id: str
    output: str
    manifest: str
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    torn_parts: int = 0
    """Manifest parts a crashed run left unreadable (their entries simply ran again)."""

    @property
    def songs_per_hour(self) -> float:
        return self.completed / (self.wall_s / 3600.0) if self.wall_s > 0 else 0.0

    def line(self) -> str:
        return (
            f"batch {self.run_id}: {self.completed} completed, {self.failed} failed, {self.skipped} skipped"
            f" | {self.audio_s / 3600.0:.3f} h of audio in {self.wall_s:.1f} s wall"
            f" | {self.songs_per_hour:.0f} songs/hour | manifest {self.manifest}"
            + (f" | {self.torn_parts} torn manifest part(s) ignored" if self.torn_parts else "")
        )

    def stage_table(self) -> str:
        """Where the time went: summed seconds per stage over this run's completed entries."""
        total = sum(self.stage_s.values()) or 1.0
        return "\n".join(
            f"  {stage:<14}{seconds:9.1f} s  {100 * seconds / total:5.1f} %" for stage, seconds in self.stage_s.items()
        )


def run_batch(
    inputs: list[str],
    output: str,
    config: Settings | None = None,
    *,
    resume: bool = True,
    progress_bars: bool = True,
    run_id: str | None = None,
    progress: Tracker | None = None,
) -> BatchSummary:
    """Transcribe every entry of ``inputs`` into ``output`` (a path or pyarrow.fs URI).

    ``progress_bars``: Ray Data's operator bars; ``progress``: the run's own figures
    (done/total, failures, songs per hour, ETA), shown by its view while the run goes on.
    """
    progress = progress or Tracker()
    try:
        return _run(inputs, output, config, resume, progress_bars, run_id, progress)
    finally:
        progress.close()


def _run(
    inputs: list[str],
    output: str,
    config: Settings | None,
    resume: bool,
    progress_bars: bool,
    run_id: str | None,
    progress: Tracker,
) -> BatchSummary:
    config = config or Settings()
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    started = time.perf_counter()
    store = ResultStore(output)
    manifest = Manifest(store, run_id)
    summary = BatchSummary(run_id=run_id, output=store.url(), manifest=store.url(MANIFEST))

    entries, input_failures = expand_inputs(inputs, config.pipeline.source, config.batch.max_playlist_entries)
    done = manifest.done(manifest.load()) if resume else {}
    summary.torn_parts = len(manifest.unreadable)
    to_run = [entry for entry in entries if entry.id not in done]
    early_rows = [_skipped_row(done[entry.id], entry, run_id) for entry in entries if entry.id in done]
    early_rows += [_input_failure_row(failure, run_id) for failure in input_failures]
    summary.skipped = sum(1 for row in early_rows if row["status"] == SKIPPED)
    summary.failed = sum(1 for row in early_rows if row["status"] == FAILED)
    summary.failures = [row for row in early_rows if row["status"] == FAILED]
    manifest.append(early_rows)
    for row in early_rows:
        _record_entry(row)
    progress.start(len(entries) + len(input_failures), skipped=summary.skipped, failed=summary.failed)
    log.info(
        "batch %s: %d entries, %d already done, %d inputs unreadable",
        run_id,
        len(entries),
        len(done),
        len(input_failures),
    )

    if to_run:
        _stream(to_run, config, store, manifest, summary, progress_bars, progress)
    manifest.consolidate()
    summary.wall_s = time.perf_counter() - started
    return summary


def _stream(
    entries: list[BatchEntry],
    config: Settings,
    store: ResultStore,
    manifest: Manifest,
    summary: BatchSummary,
    progress_bars: bool,
    progress: Tracker,
) -> None:
    dataset = build_dataset(entries, config, store.url(), manifest.run_id, progress_bars=progress_bars)
    buffer: list[dict] = []
    last_flush = time.monotonic()
    try:
        for row in dataset.iter_rows():
            row = dict(row)
            buffer.append(row)
            _count(summary, row)
            _record_entry(row)
            progress.add(row["status"])
            flush = config.batch
            if len(buffer) >= flush.manifest_flush_rows or time.monotonic() - last_flush >= flush.manifest_flush_s:
                manifest.append(buffer)
                buffer, last_flush = [], time.monotonic()
    except Exception as exc:
        cause = _pipeline_error_in(exc)
        if cause is not None:  # e.g. a model that cannot load: say that, not Ray's wrapper
            raise cause from exc
        raise
    finally:  # whatever stopped the stream, keep what finished
        manifest.append(buffer)


def _pipeline_error_in(exc: BaseException) -> PipelineError | None:
    """The PipelineError behind a Ray task/actor failure, if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PipelineError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def build_dataset(
    entries: list[BatchEntry], config: Settings, output_uri: str, run_id: str, *, progress_bars: bool = True
):
    """The streaming Dataset of one run (lazy: nothing runs until it is iterated)."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    from rescored_ray.batch.config import ActorStage
    from rescored_ray.batch.plan import StagePlan, cluster_nodes, plan_batch
    from rescored_ray.batch.stages import AcquireAudio, SeparateStems, TranscribeStems, WriteScore, _ModelStage

    connect()
    plan = plan_batch(config, cluster_nodes())
    log.info("batch plan: %s", plan.describe())
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress_bars
    context.raise_original_map_exception = True  # a stage's PipelineError reaches us as itself
    batch = config.batch
    if batch.object_store_memory:
        context.execution_options.resource_limits = context.execution_options.resource_limits.copy(
            object_store_memory=batch.object_store_memory
        )
    # the model threads the plan chose travel with the settings
    pipeline = config.pipeline.model_copy(deep=True)
    if plan.separator is not None:
        pipeline.separation.threads = plan.separator.threads
    pipeline.transcription.threads = plan.transcriber.threads
    settings = config.model_copy(update={"pipeline": pipeline}).model_dump_json()  # parsed once per process

    # one entry per block: entries stream one by one, and a long playlist never sits in memory as audio
    dataset: ray.data.Dataset = ray.data.from_items(
        [entry.to_row() for entry in entries], override_num_blocks=len(entries)
    )
    dataset = dataset.map(
        AcquireAudio,  # type: ignore[arg-type]  # Ray annotates map() without the callable classes it takes
        fn_constructor_kwargs={"config": settings},
        num_cpus=plan.download.num_cpus,
        compute=ActorPoolStrategy(size=plan.download.size),
    )
    model_stages: list[tuple[StagePlan, ActorStage, type[_ModelStage]]] = [
        (plan.transcriber, batch.transcriber, TranscribeStems)
    ]
    if plan.separator is not None:
        model_stages.insert(0, (plan.separator, batch.separator, SeparateStems))
    for stage_plan, options, stage in model_stages:
        dataset = dataset.map_batches(
            stage,
            fn_constructor_kwargs={"config": settings},
            batch_size=options.batch_size,
            batch_format="numpy",
            num_cpus=stage_plan.num_cpus,
            num_gpus=stage_plan.num_gpus or None,
            compute=ActorPoolStrategy(min_size=stage_plan.size, max_size=stage_plan.max_size or stage_plan.size),
        )
    return dataset.map(
        WriteScore,  # type: ignore[arg-type]
        fn_constructor_kwargs={"config": settings, "output_uri": output_uri, "run_id": run_id},
        num_cpus=plan.notation.num_cpus,
        compute=ActorPoolStrategy(size=plan.notation.size),
    )


def _count(summary: BatchSummary, row: dict) -> None:
    if row["status"] == COMPLETED:
        summary.completed += 1
        summary.audio_s += float(row.get("duration_s") or 0.0)
        for stage in STAGE_SECONDS:
            summary.stage_s[stage] = summary.stage_s.get(stage, 0.0) + float(row.get(f"{stage}_s") or 0.0)
    else:
        summary.failed += 1
        summary.failures.append(row)


def _record_entry(row: dict) -> None:
    """Batch metrics, recorded by the driver as rows come back (stage durations are recorded
    where they ran, by the stages themselves)."""
    metrics.inc("rescored_batch_entries_total", status=row["status"], stage=row.get("stage") or "")
    if row["status"] == COMPLETED:
        metrics.inc("rescored_audio_seconds_total", float(row.get("duration_s") or 0.0), path="batch")


def _skipped_row(previous: dict, entry: BatchEntry, run_id: str) -> dict:
    """A finished entry of an earlier run: its results stay, this run only notes it."""
    row = dict(previous, status=SKIPPED, index=entry.index, input=entry.input, run_id=run_id)
    row.pop("finished_at", None)
    return row


def _input_failure_row(failure: InputFailure, run_id: str) -> dict:
    error = failure.error
    return {
        "id": safe_id(failure.input, failure.input),
        "url": failure.input,
        "input": failure.input,
        "index": -1,
        "status": FAILED,
        "error": str(error),
        "retryable": bool(error.retryable),
        "stage": error.stage,
        "attempts": 1,
        "run_id": run_id,
    }


def connect(address: str | None = None) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray with this
    machine's cores (the plan fits every stage into them). Returns whether this call
    started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
        return False
    ray.init()
    return True
