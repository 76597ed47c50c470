"""Notes to sheet music: cleaning, tempo/key estimation, quantisation, score writing.

Basic Pitch hands us seconds-based notes with jitter, fragments and overlaps.
Feeding its MIDI straight through ``music21.converter.parse`` produced scores
that could not even be written (``Cannot convert "duplex-maxima" duration to
MusicXML``), so this module builds the notation itself:

* every onset and offset is snapped to an integer tick grid (``divisions_per_quarter``
  per quarter note), so all arithmetic is exact and nothing can become
  zero-length or negative;
* each staff is cut at every onset, offset and barline ("chordified"), so
  overlapping notes become chords with per-note ties and a staff is always a
  single valid voice;
* every piece is split into note values that MusicXML can spell (at most one
  dot, simple tuplets), tied across beats and barlines.

Because the measures are built complete, export skips music21's slow generic
``makeNotation`` pass; a 3,000-note song notates and writes in a few seconds.

Conventions:

* ``NotationResult.key`` (and :func:`estimate_key`) use ``"<Tonic> <mode>"`` with
  an upper-case tonic and ``#``/``b`` accidentals, e.g. ``"A minor"``,
  ``"Eb major"``; that string is also accepted as ``key_override``.
* Tempo is in quarter notes per minute, whatever the time signature.
* Every part is written at sounding pitch (MusicXML pitch == MIDI pitch): the
  bass uses a plain bass clef, the guitar the conventional treble-8vb clef
  (a display clef; the stored pitches are not transposed).

This module imports no Ray and no torch; librosa and verovio load lazily.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from math import lcm
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from music21.musicxml import m21ToXml
from music21 import (
    bar,
    beam,
    chord,
    clef,
    defaults,
    duration,
    freezeThaw,
    instrument,
    key,
    layout,
    metadata,
    meter,
    note,
    pitch,
    stream,
    tempo,
    tie,
)

from rescored_ray.config import NotationConfig
from rescored_ray.errors import NonRetryableError, log_unexpected, unexpected
from rescored_ray.types import SAMPLE_RATE, Note

__all__ = [
    "NotationResult",
    "clean_notes",
    "estimate_tempo",
    "estimate_key",
    "parse_key",
    "notate",
    "write_musicxml",
    "write_midi",
    "render_svg",
]

STAGE = "notation"

MIN_BPM, MAX_BPM = 40.0, 240.0
"""Hard clamp for any tempo (estimated or overridden)."""
FOLD_LOW_BPM, FOLD_HIGH_BPM = 60.0, 180.0
"""Estimated tempi are folded by octaves into this range: beat trackers often
lock onto half or double the tempo a reader expects."""
DEFAULT_BPM = 120.0
MAX_SCORE_SECONDS = 3600.0
"""Notes past one hour are dropped: a stray timestamp must not make a
million-bar score (the longest accepted recording is 15 minutes)."""
MAX_TEMPO_AUDIO_SECONDS = 240.0
"""Only the central four minutes of the mix are analysed for tempo, which keeps
the spectrogram small on long recordings."""
PIANO_SPLIT_PITCH = 60
"""Piano notes at or above middle C go to the right hand (treble) staff."""

# Krumhansl-Kessler key profiles (probe-tone ratings), index 0 = tonic.
_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Conventional (fewest accidentals) spelling of each tonic pitch class.
_MAJOR_TONICS = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
_MINOR_TONICS = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"]


CONTIGUOUS_S = 1e-3
"""Same-pitch notes whose gap is within this are back-to-back repetitions, never merged."""
FRAGMENT_AMPLITUDE_RATIO = 0.8
"""A same-pitch note after a short gap is a fragment only if it is this much weaker."""


@dataclass
class NotationResult:
    """A finished score plus what was decided on the way (for the job report)."""

    score: stream.Score
    key: str
    """``"<Tonic> <mode>"``, e.g. ``"A minor"``, ``"Eb major"``."""
    tempo_bpm: float
    """Quarter notes per minute used for quantisation (and written as playback tempo)."""
    time_signature: str
    n_notes: int
    """Notes kept after cleaning, all stems together."""
    n_notes_by_stem: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    time_offset_s: float = 0.0
    """Audio time of the score's first beat: score seconds + this = audio seconds."""
    notes: dict[str, list[Note]] = field(default_factory=dict, repr=False)
    """The cleaned notes behind the score, per stem, in audio seconds."""

    # Plain pickling of a music21 stream keeps offset tables keyed by id(), which
    # go stale in the receiving process (Ray object store, multiprocessing); the
    # unpickled score then fails to export, intermittently. music21's own
    # freeze/thaw rebuilds them.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["score"] = freezeThaw.StreamFreezer(self.score).writeStr(fmt="pickle")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        thawer = freezeThaw.StreamThawer()
        thawer.openStr(state["score"])
        self.__dict__.update(state, score=thawer.stream)


# --------------------------------------------------------------------------- cleaning


def _coerce_note(item: Any, stem: str | None = None) -> Note | None:
    """Best-effort conversion of anything note-like to a valid :class:`Note`.

    Returns ``None`` for anything unusable, so callers never see an exception
    from malformed model output.
    """
    try:
        if isinstance(item, Mapping):
            get = item.get
        else:
            def get(name, default=None):
                return getattr(item, name, default)
        start = float(get("start_s"))
        end = float(get("end_s"))
        raw_pitch = float(get("pitch"))
        if not (math.isfinite(start) and math.isfinite(end) and math.isfinite(raw_pitch)):
            return None
        if start < 0 or end <= start:
            return None
        midi = int(round(raw_pitch))
        try:
            vel = float(get("velocity", 80))
            vel = int(round(vel)) if math.isfinite(vel) else 80
        except (TypeError, ValueError):
            vel = 80
        vel = min(127, max(1, vel))
        try:
            amp = float(get("amplitude", 0.0) or 0.0)
            amp = amp if math.isfinite(amp) else 0.0
        except (TypeError, ValueError):
            amp = 0.0
        if stem is None:
            raw_stem = get("stem", "mix")
            stem = raw_stem if isinstance(raw_stem, str) and raw_stem else "mix"
        return Note(start_s=start, end_s=end, pitch=midi, velocity=vel, stem=stem, amplitude=amp)
    except (TypeError, ValueError, OverflowError, AttributeError, KeyError):
        return None


def _iter_items(notes: Any) -> Iterable[Any]:
    if notes is None or isinstance(notes, (str, bytes)):
        return ()
    try:
        return list(notes)
    except TypeError:
        return ()


def clean_notes(notes: Sequence[Note], cfg: NotationConfig) -> list[Note]:
    """Drop what no reader wants and glue together what the model broke apart.

    Order matters: invalid and out-of-range notes go first, then same-pitch
    fragments on the same stem separated by a gap shorter than ``merge_gap_ms``
    are merged (the later one extends the earlier one; overlaps are merged too;
    notes that touch are repeated notes and stay apart),
    and only then are notes shorter than ``min_note_ms`` dropped, so that a
    fragmented long note survives as one. Never raises; returns notes sorted
    by (start, pitch).
    """
    gap_s = max(0.0, float(cfg.merge_gap_ms)) / 1000.0
    min_s = max(0.0, float(cfg.min_note_ms)) / 1000.0
    lo, hi = int(cfg.lowest_pitch), int(cfg.highest_pitch)

    by_voice: dict[tuple[str, int], list[Note]] = {}
    for item in _iter_items(notes):
        n = _coerce_note(item)
        if n is None or not lo <= n.pitch <= hi:
            continue
        by_voice.setdefault((n.stem, n.pitch), []).append(n)

    kept: list[Note] = []
    for fragments in by_voice.values():
        fragments.sort(key=lambda n: (n.start_s, n.end_s))
        cur = fragments[0]
        for nxt in fragments[1:]:
            # Basic Pitch starts a note only at an onset, so a note that begins exactly
            # where the previous one ends is a re-articulation (a repeated note), not a
            # fragment: merging those cost 0.03-0.09 onset F1 on rendered chorales.
            # A fragment after a short dip comes back weaker than the note it continues;
            # a re-struck note comes back as strong (or with no amplitude known).
            gap = nxt.start_s - cur.end_s
            weaker = 0 < nxt.amplitude < FRAGMENT_AMPLITUDE_RATIO * cur.amplitude
            if gap < -CONTIGUOUS_S or (CONTIGUOUS_S < gap < gap_s and weaker):
                cur = Note(
                    start_s=cur.start_s,
                    end_s=max(cur.end_s, nxt.end_s),
                    pitch=cur.pitch,
                    velocity=max(cur.velocity, nxt.velocity),
                    stem=cur.stem,
                    amplitude=max(cur.amplitude, nxt.amplitude),
                )
            else:
                kept.append(cur)
                cur = nxt
        kept.append(cur)

    kept = [n for n in kept if n.end_s - n.start_s >= min_s]
    kept.sort(key=lambda n: (n.start_s, n.pitch, n.stem, n.end_s))
    return kept


# --------------------------------------------------------------------------- tempo


def _fold_bpm(bpm: float) -> float:
    """Fold octave errors into the readable range, then clamp."""
    if not math.isfinite(bpm) or bpm <= 0:
        return DEFAULT_BPM
    while bpm > FOLD_HIGH_BPM:
        bpm /= 2.0
    while bpm < FOLD_LOW_BPM:
        bpm *= 2.0
    return float(min(MAX_BPM, max(MIN_BPM, bpm)))


def _tempo_from_envelope(env: np.ndarray, frame_rate: float) -> float | None:
    """Dominant periodicity of an onset-strength envelope, in BPM.

    Global autocorrelation (via FFT, so minutes of envelope are cheap) weighted
    by librosa's log-normal prior around 120 BPM to choose among metrical
    levels, then parabolic interpolation around the chosen peak for
    sub-frame precision. ``None`` when there is no usable periodicity.
    """
    env = np.nan_to_num(np.asarray(env, dtype=np.float64).ravel())
    n = env.size
    min_lag = int(math.floor(frame_rate * 60.0 / MAX_BPM))
    max_lag = int(math.ceil(frame_rate * 60.0 / MIN_BPM))
    if n < 2 * min_lag + 4:
        return None
    max_lag = min(max_lag, n // 2)
    env = _smooth(env, 0.02 * frame_rate)  # sub-frame misalignment must not favour 2x lags
    env = env - env.mean()
    if not np.any(np.abs(env) > 1e-12):
        return None
    size = 1 << int(math.ceil(math.log2(2 * n)))
    spec = np.fft.rfft(env, size)
    acf = np.fft.irfft(spec * np.conj(spec), size)[: max_lag + 2]
    if acf[0] <= 0:
        return None
    acf = acf / acf[0] * (n / (n - np.arange(acf.size)))  # unbiased
    lags = np.arange(max(min_lag, 1), max_lag + 1)
    if lags.size < 3:
        return None
    vals = acf[lags]
    peaks = (vals >= acf[lags - 1]) & (vals >= acf[lags + 1]) & (vals > 0)
    if not np.any(peaks):
        return None
    bpms = 60.0 * frame_rate / lags
    prior = np.exp(-0.5 * np.log2(bpms / 120.0) ** 2)
    score = np.where(peaks, vals * prior, -np.inf)
    lag = int(lags[int(np.argmax(score))])
    y0, y1, y2 = acf[lag - 1], acf[lag], acf[lag + 1]
    denom = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
    shift = float(min(0.5, max(-0.5, shift)))
    return 60.0 * frame_rate / (lag + shift)


def _notes_envelope(notes: Sequence[Note], frame_rate: float = 200.0) -> np.ndarray | None:
    """Velocity-weighted onset impulses (``None`` when there are too few onsets)."""
    onsets = np.array([n.start_s for n in notes], dtype=np.float64)
    vel = np.array([n.velocity for n in notes], dtype=np.float64) / 127.0
    ok = np.isfinite(onsets) & (onsets >= 0) & (onsets <= MAX_SCORE_SECONDS)
    onsets, vel = onsets[ok], vel[ok]
    if np.unique(np.round(onsets, 2)).size < 4 or onsets.max() - onsets.min() < 1.0:
        return None
    frames = np.round((onsets - onsets.min()) * frame_rate).astype(np.int64)
    env = np.zeros(int(frames.max()) + int(frame_rate) + 1)
    np.add.at(env, frames, vel)
    return env


def _smooth(env: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing (sigma in frames): tolerates onset jitter of a few tens of ms."""
    if sigma < 0.5:
        return env
    half = int(math.ceil(4 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    return np.convolve(env, kernel / kernel.sum(), mode="same")


def _audio_envelope(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, float] | None:
    """librosa onset strength of the mono mix (central 4 minutes, 22.05 kHz)."""
    import librosa  # lazy: heavy import, only needed with audio

    y = np.asarray(audio, dtype=np.float32)
    if y.ndim == 2:
        if y.shape[0] > y.shape[1]:  # (frames, channels) given by mistake
            y = y.T
        y = y.mean(axis=0)
    elif y.ndim != 1:
        return None
    y = np.nan_to_num(y)
    if y.size < sample_rate * 2:
        return None
    max_frames = int(MAX_TEMPO_AUDIO_SECONDS * sample_rate)
    if y.size > max_frames:
        start = (y.size - max_frames) // 2
        y = y[start : start + max_frames]
    target_sr = 22050
    if sample_rate != target_sr:
        y = librosa.resample(y, orig_sr=sample_rate, target_sr=target_sr, res_type="soxr_hq")
    hop = 256
    env = librosa.onset.onset_strength(y=y, sr=target_sr, hop_length=hop, n_fft=1024)
    return env, target_sr / hop


def _estimate_tempo(
    notes: Sequence[Note], audio: np.ndarray | None, sample_rate: int | None
) -> tuple[float, str, list[str]]:
    """Tempo plus where it came from (``audio``/``notes``/``default``) and warnings."""
    warnings: list[str] = []
    if audio is not None:
        try:
            got = _audio_envelope(audio, int(sample_rate or SAMPLE_RATE))
            bpm = _tempo_from_envelope(*got) if got is not None else None
            if bpm is not None:
                return _fold_bpm(bpm), "audio", warnings
            warnings.append("tempo: no beat found in the audio; estimating from note onsets")
        except Exception as exc:  # noqa: BLE001 - a bad mix must not fail notation
            warnings.append(f"tempo: audio analysis failed ({exc!r}); estimating from note onsets")
    valid = [n for n in (_coerce_note(x) for x in _iter_items(notes)) if n is not None]
    env = _notes_envelope(valid) if valid else None
    bpm = _tempo_from_envelope(env, 200.0) if env is not None else None
    if bpm is not None:
        return _fold_bpm(bpm), "notes", warnings
    warnings.append(f"tempo: too few notes to estimate; using {DEFAULT_BPM:g} BPM")
    return DEFAULT_BPM, "default", warnings


def estimate_tempo(
    notes: Sequence[Note], audio: np.ndarray | None = None, sample_rate: int | None = None
) -> float:
    """Quarter-note tempo in BPM, folded into 60-180 and clamped to 40-240.

    Uses the onset strength of ``audio`` (the mix; shape (channels, frames) or
    (frames,)) when given, otherwise the note onsets; 120 when neither has a
    usable pulse. Never raises.
    """
    return _estimate_tempo(notes, audio, sample_rate)[0]


# --------------------------------------------------------------------------- key


def _key_name(tonic_pc: int, mode: str) -> str:
    tonics = _MAJOR_TONICS if mode == "major" else _MINOR_TONICS
    return f"{tonics[tonic_pc % 12]} {mode}"


def estimate_key(notes: Sequence[Note]) -> str:
    """Krumhansl-Schmuckler key finding on duration-weighted pitch classes.

    Correlates the pitch-class histogram with the 24 rotated Krumhansl-Kessler
    profiles. Ties (and float noise) resolve to the first candidate in the
    order C..B major, then C..B minor, so the result is deterministic.
    Returns e.g. ``"A minor"``; ``"C major"`` when there is nothing to go on.
    """
    hist = np.zeros(12)
    for item in _iter_items(notes):
        n = _coerce_note(item)
        if n is not None and 0 <= n.pitch <= 127:
            hist[n.pitch % 12] += n.end_s - n.start_s
    if hist.sum() <= 0 or np.allclose(hist, hist[0]):
        return "C major"
    scores = []
    for mode, profile in (("major", _KK_MAJOR), ("minor", _KK_MINOR)):
        for tonic in range(12):
            r = np.corrcoef(hist, np.roll(profile, tonic))[0, 1]
            scores.append((round(float(r), 9) if math.isfinite(r) else -2.0, tonic, mode))
    best = max(s[0] for s in scores)
    _, tonic, mode = next(s for s in scores if s[0] >= best)
    return _key_name(tonic, mode)


_KEY_RE = re.compile(r"^\s*([A-Ga-g])\s*(#|♯|b|♭|-|sharp|flat)?\s*([A-Za-z]*)\s*$")
_ACCIDENTALS = {"#": "#", "♯": "#", "sharp": "#", "b": "-", "♭": "-", "flat": "-", "-": "-"}


def parse_key(text: str) -> key.Key:
    """Parse a user key such as ``"Gm"``, ``"G minor"``, ``"F#"``, ``"Bb major"``.

    A bare lower-case tonic means minor (music21's convention); ``m``/``M``
    alone mean minor/major, longer mode words are case-insensitive. Raises
    :class:`NonRetryableError` (stage ``notation``) on anything else, because
    retrying a typo cannot help.
    """
    m = _KEY_RE.match(text) if isinstance(text, str) else None
    mode_word = m.group(3) if m else ""
    if mode_word == "m" or mode_word.lower() in ("min", "minor"):
        mode = "minor"
    elif mode_word == "M" or mode_word.lower() in ("maj", "major"):
        mode = "major"
    elif m and not mode_word:
        mode = "minor" if m.group(1).islower() else "major"
    else:
        raise NonRetryableError(
            f"invalid key_override {text!r}: expected e.g. 'G minor', 'Gm', 'F#', 'Bb major'",
            stage=STAGE,
        )
    tonic = m.group(1).upper() + _ACCIDENTALS.get(m.group(2) or "", "")
    try:
        return key.Key(tonic, mode)
    except Exception as exc:  # noqa: BLE001 - music21 raises assorted types
        raise NonRetryableError(f"invalid key_override {text!r}: {exc}", stage=STAGE) from exc


def _key_str(k: key.Key) -> str:
    return f"{k.tonic.name.replace('-', 'b')} {k.mode}"


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class _Grid:
    """Exact integer time base: ``tpq`` ticks per quarter note."""

    bpm: float
    divisions: int
    tpq: int
    step: int  # ticks per quantisation step
    bar: int  # ticks per measure
    beat: int  # ticks per beat
    ts: str
    origin_s: float = 0.0  # audio time of tick 0 (the grid's phase)

    @property
    def seconds_per_tick(self) -> float:
        return 60.0 / (self.bpm * self.tpq)

    def quantise(self, seconds: float) -> int:
        steps = int(round((seconds - self.origin_s) / (self.seconds_per_tick * self.step)))
        return max(0, steps) * self.step


def _grid_origin(notes: Sequence[Note], grid: _Grid) -> float:
    """Where tick 0 falls in the audio, so onsets land on the grid and loud onsets on beats.

    Without it a recording that starts 0.25 s before its first beat has every onset
    snapped up to half a grid step off (83 ms at 90 BPM on sixteenths, more than the
    50 ms that onset accuracy is judged by). The phase within one step minimises the
    velocity-weighted snapping error; the step within a beat maximises the weight on
    beats; the origin then sits at or before the first onset.
    """
    if not notes:
        return 0.0
    onsets = np.array([n.start_s for n in notes], dtype=np.float64)
    weights = np.array([max(1, n.velocity) for n in notes], dtype=np.float64)
    step_s = grid.seconds_per_tick * grid.step
    phases = np.arange(48) * (step_s / 48)
    deviation = (onsets[None, :] - phases[:, None]) / step_s
    cost = (np.abs(deviation - np.round(deviation)) * weights).sum(axis=1)
    phase = float(phases[int(np.argmin(cost))])
    steps_per_beat = max(1, grid.beat // grid.step)
    positions = np.round((onsets - phase) / step_s).astype(np.int64)
    on_beat = [weights[(positions - j) % steps_per_beat == 0].sum() for j in range(steps_per_beat)]
    origin = phase + int(np.argmax(on_beat)) * step_s
    beat_s = step_s * steps_per_beat
    first = float(onsets.min())
    while origin > first + step_s / 2:
        origin -= beat_s
    while origin + beat_s <= first + step_s / 2:
        origin += beat_s
    return round(origin, 6)


@lru_cache(maxsize=None)
def _expressible(tpq: int) -> tuple[bool, ...]:
    """Which tick lengths (index = ticks) one MusicXML note can spell readably.

    Allowed: plain values with at most one dot, and undotted simple tuplet
    notes. If even one tick fails that test, any non-complex music21 duration
    is accepted (unusual grids such as nonuplets).
    """
    limit = 6 * tpq  # up to a dotted whole note
    strict = [False] * (limit + 1)
    loose = [False] * (limit + 1)
    for k in range(1, limit + 1):
        d = duration.Duration(Fraction(k, tpq))
        if d.type in ("complex", "inexpressible", "zero"):
            continue
        loose[k] = True
        if not d.tuplets:
            strict[k] = d.dots <= 1
        elif len(d.tuplets) == 1 and d.dots == 0:
            strict[k] = d.tuplets[0].durationActual.type == d.type
    return tuple(strict) if strict[1] else tuple(loose)


@lru_cache(maxsize=None)
def _largest_fit(tpq: int) -> tuple[int, ...]:
    """For each n, the largest expressible tick length <= n (0 if none)."""
    ok = _expressible(tpq)
    best, out = 0, []
    for k in range(len(ok)):
        if ok[k]:
            best = k
        out.append(best)
    return tuple(out)


def _parse_time_signature(text: str) -> meter.TimeSignature:
    """Validate ``cfg.time_signature`` up front: a typo is the user's to fix, not retry."""
    try:
        ts = meter.TimeSignature(text)
        bar_ql = Fraction(ts.barDuration.quarterLength)
    except Exception as exc:  # noqa: BLE001
        raise NonRetryableError(f"invalid time_signature {text!r}: {exc}", stage=STAGE) from exc
    if not 0 < bar_ql <= 16 or ts.denominator > 32:
        raise NonRetryableError(f"unsupported time_signature {text!r}", stage=STAGE)
    return ts


def _make_grid(bpm: float, divisions: int, ts: meter.TimeSignature) -> tuple[_Grid, list[str]]:
    warnings: list[str] = []
    bar_ql = Fraction(ts.barDuration.quarterLength).limit_denominator(64)
    try:
        beat_ql = Fraction(ts.beatDuration.quarterLength).limit_denominator(64)
    except Exception:  # noqa: BLE001 - irregular meters have no single beat
        beat_ql = Fraction(4, ts.denominator)
    if beat_ql <= 0 or bar_ql % beat_ql:
        beat_ql = Fraction(4, ts.denominator)
    for d in (divisions, 12, 8, 4, 2, 1):
        tpq = lcm(d, bar_ql.denominator, beat_ql.denominator)
        # MusicXML durations are integers in music21's fixed divisions (10080 per
        # quarter): a grid that does not divide it (e.g. 11) would drift.
        if defaults.divisionsPerQuarter % tpq == 0 and _expressible(tpq)[1]:
            break
    if d != divisions:
        warnings.append(f"divisions_per_quarter={divisions} cannot be spelled in {ts.ratioString}; using {d}")
    grid = _Grid(
        bpm=bpm,
        divisions=d,
        tpq=tpq,
        step=tpq // d,
        bar=int(bar_ql * tpq),
        beat=int(beat_ql * tpq),
        ts=ts.ratioString,
    )
    return grid, warnings


def _split_lengths(pos: int, length: int, grid: _Grid) -> list[int]:
    """Cut ``length`` ticks starting ``pos`` ticks into a bar into spellable values.

    A value starting off the beat is first cut at the next beat (standard
    engraving practice, and it keeps syncopations legible); then each piece is
    the largest spellable value that fits.
    """
    fit = _largest_fit(grid.tpq)
    out: list[int] = []
    while length > 0:
        chunk = length
        if pos % grid.beat:
            chunk = min(chunk, grid.beat - pos % grid.beat)
        piece = fit[min(chunk, len(fit) - 1)]
        if piece <= 0:  # cannot happen: one tick is always spellable
            piece = chunk
        out.append(piece)
        pos += piece
        length -= piece
    return out


# --------------------------------------------------------------------------- staves


@dataclass
class _QNote:
    on: int
    off: int
    pitch: int
    velocity: int


def _quantise_staff(notes: Sequence[Note], grid: _Grid) -> list[_QNote]:
    """Snap to the grid; merge same onset+pitch; cut same-pitch overlaps.

    After this, notes of one pitch never overlap, so every sounding pitch in a
    chordified slice belongs to exactly one note (ties are unambiguous).
    """
    by_key: dict[tuple[int, int], _QNote] = {}
    for n in notes:
        on = grid.quantise(n.start_s)
        off = max(grid.quantise(n.end_s), on + grid.step)
        k = (on, n.pitch)
        q = by_key.get(k)
        if q is None:
            by_key[k] = _QNote(on, off, n.pitch, n.velocity)
        else:
            q.off = max(q.off, off)
            q.velocity = max(q.velocity, n.velocity)
    by_pitch: dict[int, list[_QNote]] = {}
    for q in by_key.values():
        by_pitch.setdefault(q.pitch, []).append(q)
    out: list[_QNote] = []
    for qs in by_pitch.values():
        qs.sort(key=lambda q: q.on)
        for a, b in zip(qs, qs[1:]):
            if a.off > b.on:
                a.off = b.on
        out.extend(qs)
    out.sort(key=lambda q: (q.on, q.pitch))
    return out


@dataclass
class _Slice:
    start: int
    end: int
    pitches: list[tuple[int, bool, bool, int]]  # pitch, tied_in, tied_out, velocity


def _slices(qnotes: list[_QNote], n_measures: int, grid: _Grid) -> list[list[_Slice]]:
    """Cut a staff at every onset, offset and barline; one slice list per measure.

    Adjacent rest slices inside a measure are merged.
    """
    total = n_measures * grid.bar
    bounds = {m * grid.bar for m in range(n_measures + 1)}
    for q in qnotes:
        bounds.add(q.on)
        bounds.add(q.off)
    edges = sorted(b for b in bounds if b <= total)
    measures: list[list[_Slice]] = [[] for _ in range(n_measures)]
    active: dict[int, _QNote] = {}
    i = 0
    for b0, b1 in zip(edges, edges[1:]):
        for p in [p for p, q in active.items() if q.off <= b0]:
            del active[p]
        while i < len(qnotes) and qnotes[i].on <= b0:
            q = qnotes[i]
            active[q.pitch] = q
            i += 1
        m = b0 // grid.bar
        if active:
            pitches = [(p, q.on < b0, q.off > b1, q.velocity) for p, q in sorted(active.items())]
            measures[m].append(_Slice(b0, b1, pitches))
        else:
            prev = measures[m][-1] if measures[m] else None
            if prev is not None and not prev.pitches and prev.end == b0:
                prev.end = b1
            else:
                measures[m].append(_Slice(b0, b1, []))
    return measures


_TIE = {(False, True): "start", (True, True): "continue", (True, False): "stop"}


class _Speller:
    """Key-aware pitch spelling: diatonic names from the key, the raised leading
    tone in minor, otherwise sharps in sharp keys and flats in flat keys."""

    def __init__(self, k: key.Key):
        if k.sharps > 0:
            names = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
        elif k.sharps < 0:
            names = ["C", "D-", "D", "E-", "E", "F", "G-", "G", "A-", "A", "B-", "B"]
        else:
            names = ["C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B"]
        for p in k.getPitches():
            names[p.pitchClass] = p.name
        if k.mode == "minor":
            lt = k.tonic.transpose("M7")
            names[lt.pitchClass] = lt.name
        self._table: list[tuple[str, int]] = []
        for midi in range(128):
            p = pitch.Pitch(names[midi % 12])
            p.octave = 4
            p.octave = 4 + (midi - int(p.midi)) // 12
            self._table.append((p.name, int(p.octave)))

    def pitch(self, midi: int) -> pitch.Pitch:
        name, octave = self._table[midi]
        return pitch.Pitch(name, octave=octave)


class _PresortedChord(chord.Chord):
    """A chord built in ascending pitch order.

    music21's MusicXML exporter calls ``chord.sortAscending()`` without
    ``inPlace`` and throws the sorted deep copy away; on a dense piano part that
    wasted copy was most of the export time. Our chords are already sorted, so
    the non-in-place call returns the chord itself; ``inPlace=True`` behaves
    as in music21.
    """

    def sortAscending(self, *, inPlace=False):
        if inPlace:
            return super().sortAscending(inPlace=True)
        return self


_BEAM_COUNT = {"eighth": 1, "16th": 2, "32nd": 3, "64th": 4, "128th": 5, "256th": 6, "512th": 7, "1024th": 8}


def _beam_run(run: list[tuple[note.NotRest, int]]) -> None:
    """Beam consecutive short notes; levels a neighbour lacks become partial beams."""
    if len(run) < 2:
        return
    last = len(run) - 1
    for i, (el, count) in enumerate(run):
        beams = beam.Beams()
        for level in range(1, count + 1):
            prev_has = i > 0 and run[i - 1][1] >= level
            next_has = i < last and run[i + 1][1] >= level
            if prev_has and next_has:
                beams.append("continue")
            elif next_has:
                beams.append("start")
            elif prev_has:
                beams.append("stop")
            else:
                beams.append("partial", "right" if i == 0 else "left")
        el.beams = beams


class _MeasureWriter:
    """Turns chordified slices into music21 measures for one staff.

    Beams (per beat) and accidental visibility (key signature plus earlier
    notes in the bar, per octave; tied continuations never show one) are set
    here directly: music21's generic makeBeams/makeAccidentals passes took
    longer than everything else put together.
    """

    def __init__(self, grid: _Grid, speller: _Speller, k: key.Key):
        self.grid = grid
        self.speller = speller
        self.key_alter = {p.step: p.accidental.alter for p in k.alteredPitches}
        ok = _expressible(grid.tpq)
        self.whole_rest_ok = grid.bar < len(ok) and ok[grid.bar]

    def measure(self, idx: int, mslices: list[_Slice]) -> stream.Measure:
        grid = self.grid
        m = stream.Measure(number=idx + 1)
        m_start = idx * grid.bar
        if len(mslices) == 1 and not mslices[0].pitches and self.whole_rest_ok:
            r = note.Rest(quarterLength=Fraction(grid.bar, grid.tpq))
            r.fullMeasure = True
            m.coreAppend(r)
            m.coreElementsChanged()
            return m
        alter_state: dict[tuple[str, int], float] = {}
        run: list[tuple[note.NotRest, int]] = []
        run_beat = -1
        for s in mslices:
            pieces = _split_lengths(s.start - m_start, s.end - s.start, grid)
            pos = s.start - m_start
            for j, ticks in enumerate(pieces):
                ql = Fraction(ticks, grid.tpq)
                beat_idx = pos // grid.beat
                pos += ticks
                if not s.pitches:
                    r = note.Rest(quarterLength=ql)
                    r.fullMeasure = False  # skips a slow context lookup on export
                    m.coreAppend(r)
                    _beam_run(run)
                    run = []
                    continue
                first, last = j == 0, j == len(pieces) - 1
                members = []
                for p, tied_in, tied_out, vel in s.pitches:
                    n = note.Note(self.speller.pitch(p), quarterLength=ql)
                    n.volume.velocity = vel
                    t = _TIE.get((tied_in or not first, tied_out or not last))
                    if t:
                        n.tie = tie.Tie(t)
                    members.append(n)
                self._accidentals(members, alter_state)
                el = members[0] if len(members) == 1 else _PresortedChord(members, quarterLength=ql)
                m.coreAppend(el)
                count = _BEAM_COUNT.get(el.duration.type, 0)
                if count == 0 or beat_idx != run_beat:
                    _beam_run(run)
                    run = []
                if count:
                    run.append((el, count))
                    run_beat = beat_idx
        _beam_run(run)
        m.coreElementsChanged()
        return m

    def _accidentals(self, members: list[note.Note], state: dict[tuple[str, int], float]) -> None:
        updates = {}
        clash = {}
        for n in members:
            p = n.pitch
            slot = (p.step, p.octave)
            clash[slot] = clash.get(slot, 0) + 1
        for n in members:
            p = n.pitch
            slot = (p.step, p.octave)
            alter = p.accidental.alter if p.accidental is not None else 0.0
            if n.tie is not None and n.tie.type in ("continue", "stop"):
                if p.accidental is not None:
                    p.accidental.displayStatus = False
                continue
            expected = state.get(slot, self.key_alter.get(p.step, 0.0))
            show = alter != expected or clash[slot] > 1
            if p.accidental is None:
                if show:
                    p.accidental = pitch.Accidental("natural")
                    p.accidental.displayStatus = True
            else:
                p.accidental.displayStatus = show
            updates[slot] = alter
        state.update(updates)


def _staff(
    qnotes: list[_QNote],
    n_measures: int,
    grid: _Grid,
    speller: _Speller,
    part_cls: type[stream.Part],
    inst: instrument.Instrument,
    the_clef: clef.Clef,
    k: key.Key,
) -> stream.Part:
    """One complete staff: n_measures bars, clef/key/time in bar 1, final barline."""
    writer = _MeasureWriter(grid, speller, k)
    measures = [writer.measure(i, ms) for i, ms in enumerate(_slices(qnotes, n_measures, grid))]
    first = measures[0]
    first.coreInsert(0, the_clef)
    first.coreInsert(0, key.Key(k.tonic.name, k.mode))
    first.coreInsert(0, meter.TimeSignature(grid.ts))
    first.coreElementsChanged()
    measures[-1].rightBarline = bar.Barline("final")
    part = part_cls()
    part.coreInsert(0, inst)
    bar_ql = Fraction(grid.bar, grid.tpq)
    for i, m in enumerate(measures):
        part.coreInsert(i * bar_ql, m)
    part.coreElementsChanged()
    if grid.tpq & (grid.tpq - 1):  # tuplets possible: brackets as the exporter would make them
        for m in measures:
            stream.makeNotation.makeTupletBrackets(m, inPlace=True)
    part.streamStatus.accidentals = True
    part.streamStatus.beams = True
    part.streamStatus.tuplets = True
    return part


def _role(stem: str) -> str:
    s = stem.strip().lower()
    if s in ("vocals", "vocal", "voice"):
        return "vocals"
    if s == "bass":
        return "bass"
    if s == "guitar":
        return "guitar"
    return "piano"


_ROLE_ORDER = {"vocals": 0, "guitar": 1, "piano": 2, "bass": 3}
"""Conventional score order, top to bottom."""
_CLEFS = {"vocals": clef.TrebleClef, "guitar": clef.Treble8vbClef, "bass": clef.BassClef}


def _new_instrument(role: str, stem: str) -> instrument.Instrument:
    if role == "vocals":
        inst: instrument.Instrument = instrument.Vocalist()
        name = "Voice"
    elif role == "bass":
        inst = instrument.ElectricBass()
        name = "Bass"
    elif role == "guitar":
        inst = instrument.Guitar()
        name = "Guitar"
    else:
        inst = instrument.Piano()
        name = "Piano" if stem.strip().lower() in ("piano", "mix") else f"Piano ({stem})"
    inst.partName = name
    return inst


def _group(notes: Mapping[str, Sequence[Note]] | Sequence[Note]) -> dict[str, list[Any]]:
    """Raw items per stem, in first-seen order; mapping keys win over ``Note.stem``."""
    groups: dict[str, list[Any]] = {}
    if isinstance(notes, Mapping):
        for stem, items in notes.items():
            name = str(stem) if stem is not None and str(stem) else "mix"
            coerced = [_coerce_note(x, stem=name) for x in _iter_items(items)]
            groups.setdefault(name, []).extend(n for n in coerced if n is not None)
    else:
        for x in _iter_items(notes):
            n = _coerce_note(x)
            if n is not None:
                groups.setdefault(n.stem, []).append(n)
    return groups


# --------------------------------------------------------------------------- notate


def notate(
    notes: Mapping[str, Sequence[Note]] | Sequence[Note],
    cfg: NotationConfig,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
) -> NotationResult:
    """Turn transcribed notes (per stem, or one list grouped by ``Note.stem``) into a score.

    One part per stem: vocals (Voice, treble clef), guitar (treble-8vb),
    bass (bass clef, sounding pitch), anything else a piano grand staff split
    at middle C. Never fails on note content (silence gives rests and a
    warning); invalid ``key_override``/``time_signature`` raise
    :class:`NonRetryableError` with stage ``notation``; any other failure follows
    the one rule for unexpected errors (:func:`rescored_ray.errors.unexpected`).
    """
    try:
        return _notate(notes, cfg, audio, sample_rate)
    except NonRetryableError:
        raise
    except Exception as exc:  # noqa: BLE001 - every user-visible failure is a PipelineError
        log_unexpected(exc, STAGE)
        raise unexpected(exc, STAGE) from exc


def _notate(notes, cfg: NotationConfig, audio, sample_rate) -> NotationResult:
    warnings: list[str] = []
    ts = _parse_time_signature(cfg.time_signature)
    k_override = parse_key(cfg.key_override) if cfg.key_override else None

    groups = _group(notes)
    cleaned: dict[str, list[Note]] = {}
    for stem, items in groups.items():
        kept = clean_notes(items, cfg)
        late = [n for n in kept if n.start_s >= MAX_SCORE_SECONDS]
        if late:
            warnings.append(f"{stem}: dropped {len(late)} notes starting after {MAX_SCORE_SECONDS:g} s")
        cleaned[stem] = [
            n if n.end_s <= MAX_SCORE_SECONDS else replace(n, end_s=MAX_SCORE_SECONDS)
            for n in kept
            if n.start_s < MAX_SCORE_SECONDS
        ]
    if not cleaned:
        cleaned["mix"] = []
    all_notes = [n for ns in cleaned.values() for n in ns]
    if not all_notes:
        warnings.append("no notes to notate (silence, or everything was filtered out); the score is empty")
    for stem, ns in cleaned.items():
        if not ns and all_notes:
            warnings.append(f"{stem}: no notes after cleaning")

    if cfg.tempo_override is not None:
        bpm = float(min(MAX_BPM, max(MIN_BPM, cfg.tempo_override)))
        if bpm != cfg.tempo_override:
            warnings.append(f"tempo_override {cfg.tempo_override:g} clamped to {bpm:g} BPM")
    elif all_notes or audio is not None:
        bpm, _source, tempo_warnings = _estimate_tempo(all_notes, audio, sample_rate)
        warnings.extend(tempo_warnings if all_notes else [])
    else:
        bpm = DEFAULT_BPM
    bpm = round(bpm, 3)

    k = k_override if k_override is not None else parse_key(estimate_key(all_notes))
    grid, grid_warnings = _make_grid(bpm, cfg.divisions_per_quarter, ts)
    grid = replace(grid, origin_s=_grid_origin(all_notes, grid))
    warnings.extend(grid_warnings)
    speller = _Speller(k)

    # Quantise every staff first: the score length is the latest offset anywhere.
    staves: list[tuple[str, str, list[list[_QNote]]]] = []
    for stem, ns in sorted(cleaned.items(), key=lambda kv: _ROLE_ORDER[_role(kv[0])]):
        role = _role(stem)
        if role == "piano":
            rh = _quantise_staff([n for n in ns if n.pitch >= PIANO_SPLIT_PITCH], grid)
            lh = _quantise_staff([n for n in ns if n.pitch < PIANO_SPLIT_PITCH], grid)
            staves.append((stem, role, [rh, lh]))
        else:
            staves.append((stem, role, [_quantise_staff(ns, grid)]))
    last_tick = max((q.off for _, _, sts in staves for st in sts for q in st), default=0)
    n_measures = max(1, -(-last_tick // grid.bar))

    score = stream.Score()
    score.metadata = metadata.Metadata()
    score.metadata.title = cfg.title or "Transcription"
    ts_text = grid.ts
    parts: list[stream.Part] = []
    for stem, role, sts in staves:
        if role == "piano":
            rh = _staff(sts[0], n_measures, grid, speller, stream.PartStaff,
                        _new_instrument(role, stem), clef.TrebleClef(), k)
            lh = _staff(sts[1], n_measures, grid, speller, stream.PartStaff,
                        _new_instrument(role, stem), clef.BassClef(), k)
            for suffix, st in (("rh", rh), ("lh", lh)):
                st.id = f"{stem}-{suffix}"
                st.partName = rh.getInstrument().partName
            group = layout.StaffGroup([rh, lh], name=rh.partName, symbol="brace", barTogether=True)
            parts.extend([rh, lh])
            score.coreInsert(0, group)
        else:
            the_clef = _CLEFS[role]()
            p = _staff(sts[0], n_measures, grid, speller, stream.Part,
                       _new_instrument(role, stem), the_clef, k)
            p.id = stem
            p.partName = p.getInstrument().partName
            parts.append(p)
    for p in parts:
        score.coreInsert(0, p)
    mm = tempo.MetronomeMark(number=round(bpm), referent=duration.Duration(1.0))
    mm.numberSounding = bpm  # exact playback tempo, readable printed number
    first_measure = parts[0].getElementsByClass(stream.Measure).first()
    first_measure.coreInsert(0, mm)
    first_measure.coreElementsChanged()
    score.coreElementsChanged()

    counts = {stem: len(ns) for stem, ns in cleaned.items()}
    return NotationResult(
        score=score,
        key=_key_str(k),
        tempo_bpm=float(bpm),
        time_signature=ts_text,
        n_notes=sum(counts.values()),
        n_notes_by_stem=counts,
        warnings=warnings,
        time_offset_s=grid.origin_s,
        notes=cleaned,
    )


# --------------------------------------------------------------------------- writing


def _fully_notated(score: stream.Score) -> bool:
    """True for scores built by :func:`notate` (measures, accidentals, beams done)."""
    if not isinstance(score, stream.Score):
        return False
    parts = list(score.parts)
    return bool(parts) and all(
        p.getElementsByClass(stream.Measure).first() is not None
        and p.streamStatus.accidentals
        and p.streamStatus.beams
        for p in parts
    )


def write_musicxml(score: stream.Score, path: str | Path) -> Path:
    """Write uncompressed MusicXML to exactly ``path`` (any suffix, e.g. a temp name).

    Scores from :func:`notate` are already complete, so music21's deep copy and
    ``makeNotation`` pass are skipped (the slow part of a naive export); any
    other score gets the full treatment. ``music21.Stream.write`` is not used
    because it appends ``.musicxml`` to paths without a suffix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = m21ToXml.GeneralObjectExporter(score)
    exporter.makeNotation = not _fully_notated(score)
    path.write_bytes(exporter.parse())
    return path


_MIDI_TPQ = 480


def _midi_events(part: stream.Stream, channel: int) -> list[tuple[int, int, Any]]:
    """(tick, order, message) for one part; tied notes become one MIDI note."""
    import mido

    events: list[tuple[int, int, Any]] = []
    open_notes: dict[int, list] = {}  # midi pitch -> [start_tick, end_tick, velocity]
    finished: list[tuple[int, int, int, int]] = []
    flat = part.flatten()
    for el in flat.notes:
        if el.duration.quarterLength <= 0 or el.duration.isGrace:
            continue
        start = int(round(float(flat.elementOffset(el)) * _MIDI_TPQ))
        end = start + int(round(float(el.duration.quarterLength) * _MIDI_TPQ))
        members = list(el.notes) if isinstance(el, chord.Chord) else [el]
        for n in members:
            if not hasattr(n, "pitch"):
                continue  # unpitched percussion
            midi = int(min(127, max(0, round(n.pitch.ps))))
            t = n.tie if n.tie is not None else getattr(el, "tie", None)
            vel = n.volume.velocity if n.volume.velocity is not None else el.volume.velocity
            vel = int(min(127, max(1, vel if vel is not None else 80)))
            held = open_notes.get(midi)
            if t is not None and t.type in ("continue", "stop") and held is not None and held[1] >= start:
                held[1] = max(held[1], end)
            else:
                if held is not None:
                    finished.append((held[0], held[1], midi, held[2]))
                open_notes[midi] = [start, end, vel]
            if t is None or t.type == "stop":
                held = open_notes.pop(midi)
                finished.append((held[0], held[1], midi, held[2]))
    finished.extend((h[0], h[1], p, h[2]) for p, h in open_notes.items())
    for start, end, midi, vel in finished:
        events.append((start, 1, mido.Message("note_on", channel=channel, note=midi, velocity=vel)))
        events.append((end, 0, mido.Message("note_off", channel=channel, note=midi, velocity=0)))
    return events


def write_midi(score: stream.Score, path: str | Path) -> Path:
    """Write a type-1 standard MIDI file: a tempo track plus one track per part/staff.

    Written directly with mido (a basic-pitch/pretty-midi dependency): music21's
    MIDI writer copies the whole score and looks up dynamics context for every
    note, which took most of a minute on a 3,000-note song. Tied notes become
    single MIDI notes; tempo marks keep their (sounding) quarter-note BPM.
    """
    import mido

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = (list(score.parts) if isinstance(score, stream.Score) else []) or [score]
    mf = mido.MidiFile(type=1, ticks_per_beat=_MIDI_TPQ)

    conductor = mido.MidiTrack()
    title = score.metadata.title if score.metadata is not None and score.metadata.title else "Transcription"
    conductor.append(mido.MetaMessage("track_name", name=str(title)[:120], time=0))
    meta_events: list[tuple[int, int, Any]] = []
    marks = score.flatten().getElementsByClass(tempo.MetronomeMark)
    for mm in marks:
        bpm = mm.getQuarterBPM() or DEFAULT_BPM
        tick = int(round(float(mm.getOffsetInHierarchy(score)) * _MIDI_TPQ))
        meta_events.append((tick, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))))
    if not meta_events:
        meta_events.append((0, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(DEFAULT_BPM))))
    ts = score.flatten().getElementsByClass(meter.TimeSignature).first()
    if ts is not None:
        meta_events.append((0, 0, mido.MetaMessage(
            "time_signature", numerator=ts.numerator, denominator=ts.denominator)))
    mf.tracks.append(_track(conductor, meta_events))

    channels = [c for c in range(16) if c != 9]
    for i, part in enumerate(parts):
        channel = channels[i % len(channels)]
        track = mido.MidiTrack()
        inst = part.getInstrument(returnDefault=True)
        name = part.partName or inst.partName or f"Part {i + 1}"
        track.append(mido.MetaMessage("track_name", name=str(name)[:120], time=0))
        program = inst.midiProgram if inst.midiProgram is not None else 0
        track.append(mido.Message("program_change", channel=channel, program=int(program) % 128, time=0))
        mf.tracks.append(_track(track, _midi_events(part, channel)))
    mf.save(str(path))
    return path


def _track(track, events: list[tuple[int, int, Any]]):
    """Append absolute-tick events to a mido track as delta times (note-offs first at a tick)."""
    events.sort(key=lambda e: (e[0], e[1]))
    now = 0
    for tick, _order, msg in events:
        track.append(msg.copy(time=max(0, tick - now)))
        now = max(now, tick)
    return track


def render_svg(musicxml: str | Path, page: int = 1) -> str:
    """Render one page (1-based, clamped to the page count) of a MusicXML score as SVG.

    ``musicxml`` is a file path, or the MusicXML text itself when it starts with ``<``.
    """
    import verovio  # lazy: only the preview needs it

    verovio.enableLog(False)
    tk = verovio.toolkit()
    tk.setOptions({"pageWidth": 2100, "pageHeight": 2970, "scale": 40, "adjustPageHeight": True,
                   "footer": "none"})
    text = str(musicxml)
    if isinstance(musicxml, str) and text.lstrip().startswith("<"):
        ok = tk.loadData(text)
    else:
        if not Path(text).is_file():
            raise NonRetryableError(f"MusicXML file not found: {text}", stage=STAGE)
        ok = tk.loadFile(text)
    if not ok or tk.getPageCount() < 1:
        raise NonRetryableError("verovio could not load the MusicXML score", stage=STAGE)
    page = min(max(1, int(page)), tk.getPageCount())
    return tk.renderToSVG(page)
