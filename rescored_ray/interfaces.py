"""What :class:`~rescored_ray.pipeline.Pipeline` calls on its models, as protocols.

The pipeline runs the same code whether its models are in this process
(:class:`~rescored_ray.separation.Separator`, :class:`~rescored_ray.transcription.Transcriber`)
or behind Ray Serve deployments (:mod:`rescored_ray.service.models`); these protocols are
exactly what it calls, so either side can change without the other noticing. The tests
check every implementation against them. No Ray here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from rescored_ray.types import Audio, Note

ProgressCallback = Callable[[int, str, str], None]
"""``(percent, stage, message)``; percent only ever grows within a run."""

Checkpoint = Callable[[], None]
"""Called at stage boundaries and between Demucs chunks; a :class:`~rescored_ray.errors.PipelineError`
it raises (a soft time limit, a cancellation) stops the job and reaches the caller unchanged."""

FractionCallback = Callable[[float], None]
"""Called with the fraction of the song separated so far (0..1)."""

StemCallback = Callable[[float, str], None]
"""Called with the fraction of the stems transcribed so far and the stem just done."""


@runtime_checkable
class StemSeparator(Protocol):
    """Splits a recording into named stems."""

    @property
    def ran_on(self) -> list[dict[str, Any]]:
        """Where the last song was separated (see :func:`rescored_ray.timeline.ran_on`)."""
        ...

    def separate(
        self, audio: Audio, progress: FractionCallback | None = None, checkpoint: Checkpoint | None = None
    ) -> dict[str, Audio]:
        """Stems of ``audio`` by name. ``progress`` follows the work; ``checkpoint`` is called
        between chunks, and an exception it raises abandons the song at once."""
        ...


@runtime_checkable
class NoteTranscriber(Protocol):
    """Turns stems into notes."""

    @property
    def ran_on(self) -> list[dict[str, Any]]:
        """Where the last stems were transcribed, one entry per call."""
        ...

    def transcribe_stems(
        self, stems: Mapping[str, Audio], wanted: Iterable[str] | None = None, progress: StemCallback | None = None
    ) -> dict[str, list[Note]]:
        """Notes of each wanted pitched stem that ``stems`` has (the mix when it is all there is)."""
        ...
