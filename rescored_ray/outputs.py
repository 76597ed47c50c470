"""Writing results: every file appears whole or not at all.

Files are written to a hidden temporary name in the destination folder and then
renamed over the final name (atomic on POSIX), so a crash or a re-run never
leaves a half-written score for someone to download. Which files a job writes, and
under which names, is :mod:`rescored_ray.layout`. numpy and soundfile load only to write
FLAC: the SDK saves files through this module too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rescored_ray.types import Audio, Note


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_flac(path: str | os.PathLike[str], audio: Audio) -> Path:
    """16-bit FLAC of a stem (clipped to [-1, 1]; Demucs output can overshoot slightly)."""
    import numpy as np
    import soundfile

    samples = np.clip(audio.samples, -1.0, 1.0).T
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), samples, audio.sample_rate, format="FLAC", subtype="PCM_16")
    return Path(path)


NOTES_CSV_COLUMNS = ("stem", "pitch", "start_s", "end_s", "velocity", "amplitude")


def write_notes_csv(path: str | os.PathLike[str], notes: Iterable[Note]) -> Path:
    """The cleaned notes behind the score, in seconds of the recording (one row a note)."""
    lines = [",".join(NOTES_CSV_COLUMNS)]
    for n in sorted(notes, key=lambda n: (n.start_s, n.pitch, n.stem)):
        lines.append(f"{n.stem},{n.pitch},{n.start_s:.4f},{n.end_s:.4f},{n.velocity},{n.amplitude:.4f}")
    return write_text(path, "\n".join(lines) + "\n")
