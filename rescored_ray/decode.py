"""Decode any common audio file to float32 stereo 44.1 kHz, with PyAV.

PyAV's wheels carry FFmpeg, so no system ffmpeg is needed. Mono is duplicated,
surround is downmixed, other rates are resampled by FFmpeg's resampler. Anything
that is not decodable audio is a permanent error that says what was wrong.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import av
import numpy as np

from rescored_ray.errors import NonRetryableError
from rescored_ray.types import SAMPLE_RATE, Audio

log = logging.getLogger(__name__)

STAGE = "decode"
TRUNCATION_TOLERANCE = 0.9
"""Decoded length below this share of the container's declared length means a cut-off file."""


def _fail(path: Path, why: str) -> NonRetryableError:
    return NonRetryableError(f"cannot decode {path.name}: {why}", stage=STAGE)


def decode_audio(
    path: str | os.PathLike[str],
    *,
    sample_rate: int = SAMPLE_RATE,
    max_duration_s: float | None = None,
) -> Audio:
    """Read ``path`` into an :class:`Audio` of shape (2, frames) at ``sample_rate``.

    Raises :class:`NonRetryableError` (stage ``decode``) for empty, corrupt,
    truncated or non-audio files, and for audio longer than ``max_duration_s``.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file does not exist")
    if path.stat().st_size == 0:
        raise _fail(path, "file is empty (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise _fail(path, f"not a recognised audio/video file ({_ffmpeg_reason(exc)})") from exc
    with container:
        if not container.streams.audio:
            kinds: list[str] = sorted({str(s.type) for s in container.streams}) or ["nothing"]
            raise _fail(path, f"no audio stream (file contains {', '.join(kinds)})")
        stream = container.streams.audio[0]
        declared_s = _declared_duration(container, stream)
        if max_duration_s is not None and declared_s is not None and declared_s > max_duration_s:
            raise NonRetryableError(
                f"audio is {declared_s / 60:.1f} min long, over the {max_duration_s / 60:.1f} min limit",
                stage=STAGE,
            )
        samples = _decode_stream(container, stream, path, sample_rate, max_duration_s)
    if samples.shape[1] == 0:
        raise _fail(path, "no audio samples could be decoded (corrupt or not audio)")
    decoded_s = samples.shape[1] / sample_rate
    declared_s = _wav_declared_duration(path) or declared_s
    if declared_s and declared_s > 1.0 and decoded_s < TRUNCATION_TOLERANCE * declared_s:
        raise _fail(path, f"file is truncated: decoded {decoded_s:.1f} s of a declared {declared_s:.1f} s")
    if not np.isfinite(samples).all():
        raise _fail(path, "decoded samples contain NaN or infinity")
    return Audio(samples, sample_rate)


def _decode_stream(
    container: Any, stream: Any, path: Path, sample_rate: int, max_duration_s: float | None
) -> np.ndarray:
    # FFmpeg's mono->stereo upmix lowers the level by 3 dB; decode mono as mono and copy it.
    mono = stream.codec_context.channels == 1
    resampler = av.AudioResampler(format="fltp", layout="mono" if mono else "stereo", rate=sample_rate)
    chunks: list[np.ndarray] = []
    total = 0
    limit = None if max_duration_s is None else int(max_duration_s * sample_rate) + sample_rate
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                total += _resample_into(resampler, frame, chunks)
            if limit is not None and max_duration_s is not None and total > limit:
                raise NonRetryableError(f"audio is longer than the {max_duration_s / 60:.1f} min limit", stage=STAGE)
        total += _resample_into(resampler, None, chunks)
    except av.error.FFmpegError as exc:
        if total == 0:
            raise _fail(path, f"corrupt or not audio ({_ffmpeg_reason(exc)})") from exc
        # A damaged tail after good audio: keep what decoded; the truncation check decides.
        log.warning("decode of %s stopped early at %.1f s: %s", path.name, total / sample_rate, exc)
    if not chunks:
        return np.zeros((2, 0), dtype=np.float32)
    samples = np.concatenate(chunks, axis=1)
    if samples.shape[0] == 1:
        samples = np.repeat(samples, 2, axis=0)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _resample_into(resampler: Any, frame: Any, chunks: list[np.ndarray]) -> int:
    n = 0
    for out in resampler.resample(frame):
        array = out.to_ndarray()
        chunks.append(array)
        n += array.shape[1]
    return n


def _declared_duration(container: Any, stream: Any) -> float | None:
    """What the file's headers claim, used to detect cut-off downloads."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return None


def _wav_declared_duration(path: Path) -> float | None:
    """FFmpeg sizes a cut-off WAV by its bytes; the RIFF header still says the truth."""
    with path.open("rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        byte_rate = None
        while True:
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"fmt ":
                fmt = handle.read(size + (size & 1))
                byte_rate = int.from_bytes(fmt[8:12], "little") if len(fmt) >= 12 else None
            elif chunk[:4] == b"data":
                if not byte_rate or size in (0, 0xFFFFFFFF):  # streamed WAVs leave the size unset
                    return None
                return size / byte_rate
            else:
                handle.seek(size + (size & 1), 1)


def _ffmpeg_reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[-1].strip() or type(exc).__name__
