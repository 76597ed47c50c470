"""Model deployments: Demucs and Basic Pitch loaded once per replica, shared by all jobs.

Each replica owns one loaded model (the Celery design's ``worker_process_init``
preload, on Ray Serve). Resources come from config: a fractional ``num_gpus`` lets a
separator (0.5) and two transcribers (0.25 each) share one card. A CUDA out-of-memory
error falls back to the CPU for that song inside :class:`~rescored_ray.separation.Separator`,
so the replica stays healthy.
"""

from __future__ import annotations

import logging
import time

from ray import serve

from rescored_ray import metrics
from rescored_ray.config import SeparationConfig, TranscriptionConfig
from rescored_ray.service.serve_logs import route_to_replica_log
from rescored_ray.timeline import where
from rescored_ray.transcription import stems_to_transcribe
from rescored_ray.types import Audio, Note

log = logging.getLogger(__name__)


@serve.deployment(name="Separator", max_ongoing_requests=4, health_check_period_s=10)
class SeparatorDeployment:
    """One Demucs model per replica."""

    def __init__(self, config: dict):
        from rescored_ray.separation import Separator

        route_to_replica_log()
        self.separator = Separator(SeparationConfig.model_validate(config))
        metrics.set_gauge("rescored_model_load_seconds", self.separator.load_seconds, model=self.separator.name)
        self.songs = 0

    def separate(self, audio: Audio) -> tuple[dict[str, Audio], list[dict]]:
        """The stems, and where they were made (this replica, its device)."""
        started = time.perf_counter()
        fallbacks = self.separator.cpu_fallbacks
        stems = self.separator.separate(audio)
        self.songs += 1
        if self.separator.cpu_fallbacks > fallbacks:
            metrics.inc("rescored_gpu_cpu_fallbacks_total", model=self.separator.name)
        log.info("separated %.1f s of audio in %.1f s", audio.duration_s, time.perf_counter() - started)
        return stems, [{**where(), **worker} for worker in self.separator.ran_on]

    def info(self) -> dict:
        s = self.separator
        return {"model": s.name, "device": str(s.device), "sources": s.sources, "random_weights": s.is_random,
                "load_seconds": round(s.load_seconds, 3), "cpu_fallbacks": s.cpu_fallbacks, "songs": self.songs}

    def check_health(self) -> None:
        if self.separator.model is None:
            raise RuntimeError("Demucs model not loaded")


@serve.deployment(name="Transcriber", max_ongoing_requests=8, health_check_period_s=10)
class TranscriberDeployment:
    """One Basic Pitch ONNX session per replica."""

    def __init__(self, config: dict):
        from rescored_ray.transcription import Transcriber

        route_to_replica_log()
        self.transcriber = Transcriber(TranscriptionConfig.model_validate(config))
        metrics.set_gauge("rescored_model_load_seconds", self.transcriber.load_seconds, model="basic-pitch")
        self.stems = 0

    def transcribe(self, audio: Audio, stem: str) -> tuple[list[Note], dict]:
        """The stem's notes, and where they were transcribed."""
        notes = self.transcriber.transcribe(audio, stem=stem)
        self.stems += 1
        return notes, {**where(), **self.transcriber.ran_on[0], "stem": stem}

    def info(self) -> dict:
        t = self.transcriber
        return {"providers": t.providers, "load_seconds": round(t.load_seconds, 3), "stems": self.stems}

    def check_health(self) -> None:
        if self.transcriber.session is None:
            raise RuntimeError("Basic Pitch model not loaded")


class RemoteSeparator:
    """Looks like a :class:`Separator` to :class:`Pipeline`, runs on the Separator deployment."""

    def __init__(self, handle):
        self.handle = handle
        self.ran_on: list[dict] = []

    def separate(self, audio: Audio, progress=None, checkpoint=None) -> dict[str, Audio]:
        stems, self.ran_on = self.handle.separate.remote(audio).result()
        if progress is not None:
            progress(1.0)
        return stems


class RemoteTranscriber:
    """Looks like a :class:`Transcriber` to :class:`Pipeline`; one remote call per stem,
    all stems in flight at once so replicas work in parallel."""

    def __init__(self, handle, config: TranscriptionConfig):
        self.handle = handle
        self.config = config
        self.ran_on: list[dict] = []

    def transcribe_stems(self, stems, wanted=None, progress=None) -> dict[str, list[Note]]:
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
