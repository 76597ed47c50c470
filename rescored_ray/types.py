"""Plain data passed between stages: audio buffers and notes.

Stages hand each other in-memory arrays, never temp files, so the same objects
travel through Ray's object store unchanged in the Serve and batch paths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SAMPLE_RATE = 44100
"""Every decoded buffer and every stem is float32 stereo at this rate."""


@dataclass
class Audio:
    """A decoded recording or stem: ``samples`` is float32 of shape (channels, frames)."""

    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.frames / float(self.sample_rate)

    def mono(self) -> np.ndarray:
        mono: np.ndarray = self.samples.mean(axis=0)
        return mono


@dataclass(frozen=True)
class Note:
    """One transcribed note; times in seconds, ``pitch`` a MIDI number."""

    start_s: float
    end_s: float
    pitch: int
    velocity: int = 80
    stem: str = "mix"
    amplitude: float = field(default=0.0, compare=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SourceInfo:
    """What the source says about a recording, for the score's title and credits."""

    title: str | None = None
    artist: str | None = None
