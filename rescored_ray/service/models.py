"""Model deployments: Demucs and Basic Pitch loaded once per replica, shared by all jobs.

Each replica owns one loaded model, loaded when the replica starts, never per job (see
docs/architecture.md). Resources come from the settings: a fractional ``num_gpus`` lets a
separator (0.5) and two transcribers (0.25 each) share one card. A CUDA out-of-memory
error falls back to the CPU for that song inside :class:`~rescored_ray.separation.Separator`,
so the replica stays healthy.

Separation streams: the Separator replica yields its progress after every Demucs chunk,
and the calling worker runs its checkpoint (cancellation, soft time limit) on each. When
the checkpoint raises, the worker cancels the call, and the replica stops Demucs before
its next chunk, so a cancelled or timed-out job frees the model within one chunk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from ray import serve

from rescored_ray import metrics
from rescored_ray.config import SeparationConfig, TranscriptionConfig
from rescored_ray.errors import RescoredError
from rescored_ray.interfaces import Checkpoint, FractionCallback, StemCallback
from rescored_ray.service.serve_logs import route_to_replica_log
from rescored_ray.timeline import where
from rescored_ray.transcription import stems_to_transcribe
from rescored_ray.types import Audio, Note

log = logging.getLogger(__name__)


class SeparationStopped(RescoredError):
    """Raised between Demucs chunks inside the replica once its caller cancelled the call."""

    code = "separation_stopped"


@serve.deployment(name="Separator", max_ongoing_requests=4, health_check_period_s=10)
class SeparatorDeployment:
    """One Demucs model per replica."""

    def __init__(self, config: dict[str, Any]):
        from rescored_ray.separation import Separator

        route_to_replica_log()
        self.separator = Separator(SeparationConfig.model_validate(config))
        metrics.set_gauge("rescored_model_load_seconds", self.separator.load_seconds, model=self.separator.name)
        self.songs = 0
        self.stopped = 0
        self.chunks = 0

    def separate(
        self, audio: Audio, progress: FractionCallback | None = None, checkpoint: Checkpoint | None = None
    ) -> tuple[dict[str, Audio], list[dict[str, Any]]]:
        """The stems, and where they were made (this replica, its device)."""
        started = time.perf_counter()
        fallbacks = self.separator.cpu_fallbacks
        stems = self.separator.separate(audio, progress=progress, checkpoint=checkpoint)
        self.songs += 1
        if self.separator.cpu_fallbacks > fallbacks:
            metrics.inc("rescored_gpu_cpu_fallbacks_total", model=self.separator.name)
        log.info("separated %.1f s of audio in %.1f s", audio.duration_s, time.perf_counter() - started)
        return stems, [{**where(), **worker} for worker in self.separator.ran_on]

    async def separate_stream(self, audio: Audio) -> AsyncIterator[tuple[Any, ...]]:
        """``("progress", fraction)`` after each Demucs chunk, then ``("stems", stems, ran_on)``.

        Demucs runs in a thread; this generator only relays. When the caller cancels the call
        (its checkpoint fired), Serve cancels this coroutine and ``stop`` is set, so the
        thread's next chunk boundary raises and Demucs stops there.
        """
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[float] = asyncio.Queue()
        stop = threading.Event()

        def progress(fraction: float) -> None:
            self.chunks += 1
            loop.call_soon_threadsafe(updates.put_nowait, fraction)

        def checkpoint() -> None:
            if stop.is_set():
                raise SeparationStopped("the caller cancelled this separation")

        work = asyncio.ensure_future(asyncio.to_thread(self.separate, audio, progress, checkpoint))
        try:
            while not work.done() or not updates.empty():
                update = asyncio.ensure_future(updates.get())
                await asyncio.wait({update, work}, return_when=asyncio.FIRST_COMPLETED)
                if update.done():
                    yield ("progress", update.result())
                else:
                    update.cancel()
            stems, ran_on = await work
            yield ("stems", stems, ran_on)
        finally:
            if not work.done():  # cancelled by the caller: stop Demucs at its next chunk
                stop.set()
                self.stopped += 1
                work.add_done_callback(lambda done: done.exception())  # SeparationStopped: expected
                log.info("separation cancelled by its caller; Demucs stops at the next chunk")

    def info(self) -> dict[str, Any]:
        s = self.separator
        return {
            "model": s.name,
            "device": str(s.device),
            "precision": s.precision,
            "sources": s.sources,
            "random_weights": s.is_random,
            "load_seconds": round(s.load_seconds, 3),
            "cpu_fallbacks": s.cpu_fallbacks,
            "songs": self.songs,
            "stopped": self.stopped,
            "chunks": self.chunks,
        }

    def check_health(self) -> None:
        if self.separator.model is None:
            raise RuntimeError("Demucs model not loaded")


@serve.deployment(name="Transcriber", max_ongoing_requests=8, health_check_period_s=10)
class TranscriberDeployment:
    """One Basic Pitch ONNX session per replica."""

    def __init__(self, config: dict[str, Any]):
        from rescored_ray.transcription import Transcriber

        route_to_replica_log()
        self.transcriber = Transcriber(TranscriptionConfig.model_validate(config))
        metrics.set_gauge("rescored_model_load_seconds", self.transcriber.load_seconds, model="basic-pitch")
        self.stems = 0

    def transcribe(self, audio: Audio, stem: str) -> tuple[list[Note], dict[str, Any]]:
        """The stem's notes, and where they were transcribed."""
        notes = self.transcriber.transcribe(audio, stem=stem)
        self.stems += 1
        return notes, {**where(), **self.transcriber.ran_on[0], "stem": stem}

    def info(self) -> dict[str, Any]:
        t = self.transcriber
        return {"providers": t.providers, "load_seconds": round(t.load_seconds, 3), "stems": self.stems}

    def check_health(self) -> None:
        if self.transcriber.session is None:
            raise RuntimeError("Basic Pitch model not loaded")


class RemoteSeparator:
    """A :class:`~rescored_ray.interfaces.StemSeparator` on the Separator deployment.

    The call streams: each chunk's progress reaches ``progress``, and ``checkpoint`` runs
    between chunks; an exception it raises cancels the call, which stops Demucs in the
    replica (see :meth:`SeparatorDeployment.separate_stream`), and then reaches the pipeline.
    """

    def __init__(self, handle: Any):
        self.handle = handle
        self.ran_on: list[dict[str, Any]] = []

    def separate(
        self, audio: Audio, progress: FractionCallback | None = None, checkpoint: Checkpoint | None = None
    ) -> dict[str, Audio]:
        stream = self.handle.options(stream=True).separate_stream.remote(audio)
        try:
            for message in stream:
                if message[0] == "progress":
                    if progress is not None:
                        progress(message[1])
                    if checkpoint is not None:
                        checkpoint()
                else:
                    _, stems, self.ran_on = message
                    return dict(stems)
        except BaseException:
            stream.cancel()
            raise
        raise RuntimeError("the Separator's stream ended without stems")


class RemoteTranscriber:
    """A :class:`~rescored_ray.interfaces.NoteTranscriber` on the Transcriber deployment; one
    remote call per stem, all stems in flight at once so replicas work in parallel."""

    def __init__(self, handle: Any, config: TranscriptionConfig):
        self.handle = handle
        self.config = config
        self.ran_on: list[dict[str, Any]] = []

    def transcribe_stems(
        self, stems: Mapping[str, Audio], wanted: Iterable[str] | None = None, progress: StemCallback | None = None
    ) -> dict[str, list[Note]]:
        names = stems_to_transcribe(stems, wanted or self.config.stems)
        pending = {name: self.handle.transcribe.remote(stems[name], name) for name in names}
        result: dict[str, list[Note]] = {}
        self.ran_on = []
        for index, name in enumerate(names):
            result[name], worker = pending[name].result()
            self.ran_on.append(worker)
            if progress is not None:
                progress((index + 1) / len(names), name)
        return result
