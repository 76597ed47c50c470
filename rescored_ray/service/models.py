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

from rescored_ray.config import SeparationConfig, TranscriptionConfig
from rescored_ray.transcription import stems_to_transcribe
from rescored_ray.types import Audio, Note

log = logging.getLogger(__name__)


@serve.deployment(name="Separator", max_ongoing_requests=4, health_check_period_s=10)
class SeparatorDeployment:
    """One Demucs model per replica."""

    def __init__(self, config: dict):
        from rescored_ray.separation import Separator

        self.separator = Separator(SeparationConfig.model_validate(config))
        self.songs = 0

    def separate(self, audio: Audio) -> dict[str, Audio]:
        started = time.perf_counter()
        stems = self.separator.separate(audio)
        self.songs += 1
        log.info("separated %.1f s of audio in %.1f s", audio.duration_s, time.perf_counter() - started)
        return stems

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

        self.transcriber = Transcriber(TranscriptionConfig.model_validate(config))
        self.stems = 0

    def transcribe(self, audio: Audio, stem: str) -> list[Note]:
        notes = self.transcriber.transcribe(audio, stem=stem)
        self.stems += 1
        return notes

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

    def separate(self, audio: Audio, progress=None, checkpoint=None) -> dict[str, Audio]:
        stems = self.handle.separate.remote(audio).result()
        if progress is not None:
            progress(1.0)
        return stems


class RemoteTranscriber:
    """Looks like a :class:`Transcriber` to :class:`Pipeline`; one remote call per stem,
    all stems in flight at once so replicas work in parallel."""

    def __init__(self, handle, config: TranscriptionConfig):
        self.handle = handle
        self.config = config

    def transcribe_stems(self, stems, wanted=None, progress=None) -> dict[str, list[Note]]:
        names = stems_to_transcribe(stems, wanted or self.config.stems)
        pending = {name: self.handle.transcribe.remote(stems[name], name) for name in names}
        result: dict[str, list[Note]] = {}
        for index, name in enumerate(names):
            result[name] = pending[name].result()
            if progress is not None:
                progress((index + 1) / len(names), name)
        return result
