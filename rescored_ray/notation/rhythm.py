"""Note values: onsets and offsets in seconds become positions on the metrical grid.

Everything after this module counts in integer *ticks*: :data:`TPQ` per quarter note
(24, so eighths, sixteenths, thirty-seconds and eighth/sixteenth triplets are all
whole numbers). Tick 0 is the start of the first written measure (the pickup's
start when there is one).

Quantisation prefers the simplest values that explain the audio. Each beat picks
one subdivision for all the onsets in it (plain beat, eighths, sixteenths, triplets,
thirty-seconds) by trading the timing error (Gaussian, :data:`JITTER_S`) against a
cost per level of complexity, so a quarter stays a quarter when the model's onsets
jitter by 30 ms, and triplets appear only where at least two onsets of a beat need them
and they fit clearly better than sixteenths. An offset close to a later onset snaps to it (legato), otherwise it is
rounded to an eighth (a sixteenth for very short notes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rescored_ray.notation.beats import TempoMap
from rescored_ray.notation.meter import Meter
from rescored_ray.types import Note

TPQ = 24
"""Ticks per quarter note."""
EIGHTH = TPQ // 2
JITTER_S = 0.035
"""Typical onset error of the transcription (seconds), the scale of the timing cost."""
LEGATO_S = 0.12
"""An offset this close to a later onset (or a quarter of the note, if longer) ends there."""

TRIPLET_STEPS = (TPQ // 3, TPQ // 6)
"""Eighth- and sixteenth-note triplets."""
# (ticks per step, complexity) for each subdivision a beat may use.
_SIMPLE_GRIDS = ((24, 0.0), (12, 1.0), (6, 2.4), (8, 3.4), (4, 4.4), (3, 6.0))
_COMPOUND_GRIDS = ((36, 0.0), (12, 1.0), (6, 2.4), (3, 6.0))
COMPLEXITY_WEIGHT = 2.5
"""How many squared jitter units one level of complexity is worth."""


@dataclass
class QNote:
    """A note on the tick grid."""

    on: int
    off: int
    pitch: int
    velocity: int = 80
    stem: str = "mix"
    staff: int = 0
    voice: int = 1

    @property
    def length(self) -> int:
        return self.off - self.on


@dataclass(frozen=True)
class ScoreGrid:
    """Where the score's ticks fall in the recording.

    ``eighths`` is the eighth-note tempo map; eighth ``origin`` is tick 0, and the
    first full bar starts ``pickup`` ticks later. ``finest`` is the shortest step an
    onset may be placed on (ticks; ``notation.divisions_per_quarter`` sets it).
    """

    eighths: TempoMap
    meter: Meter
    origin: float
    pickup: int
    finest: int = 6
    meter_confidence: float = 1.0
    """How sure the meter model was of ``meter`` (1 when it was given)."""

    @property
    def beat_ticks(self) -> int:
        return self.meter.beat_tatums * EIGHTH

    @property
    def bar_ticks(self) -> int:
        return self.meter.bar_tatums * EIGHTH

    def ticks(self, seconds: np.ndarray | float) -> np.ndarray:
        return (self.eighths.position(seconds) - self.origin) * EIGHTH

    def seconds(self, ticks: np.ndarray | float) -> np.ndarray:
        return self.eighths.time(np.asarray(ticks, dtype=np.float64) / EIGHTH + self.origin)

    @property
    def origin_s(self) -> float:
        """Audio time of tick 0."""
        return float(self.seconds(0.0))

    def measure_start(self, index: int) -> int:
        """Tick of measure ``index`` (0 = the pickup if any, else the first full bar)."""
        if self.pickup:
            return 0 if index == 0 else self.pickup + (index - 1) * self.bar_ticks
        return index * self.bar_ticks

    def measure_of(self, tick: int) -> int:
        if self.pickup:
            return 0 if tick < self.pickup else 1 + (tick - self.pickup) // self.bar_ticks
        return tick // self.bar_ticks

    def beat_start(self, tick: int) -> int:
        """Start of the beat containing ``tick``."""
        rel = tick - self.pickup
        return self.pickup + (rel // self.beat_ticks) * self.beat_ticks

    def beat_seconds(self, tick: int) -> float:
        return float(self.seconds(tick + self.beat_ticks) - self.seconds(tick))


def _grid_for_beat(raw: np.ndarray, beat_start: int, grid: ScoreGrid) -> int:
    """The subdivision (ticks per step) that explains the onsets of one beat best."""
    options = [
        o
        for o in (_COMPOUND_GRIDS if grid.meter.compound else _SIMPLE_GRIDS)
        if o[0] >= grid.finest or (o[0] in TRIPLET_STEPS and o[0] * 3 // 2 >= grid.finest)
    ]
    options = options or [(grid.beat_ticks, 0.0)]
    sec_per_tick = grid.beat_seconds(beat_start) / grid.beat_ticks
    best, best_cost = options[0][0], math.inf
    rel = raw - beat_start
    for step, complexity in options:
        snapped = np.round(rel / step) * step
        if step in TRIPLET_STEPS and np.sum(snapped % (TPQ // 4) != 0) < 2:
            continue  # a triplet needs at least two onsets of its own; one alone is a late note
        err = (rel - snapped) * sec_per_tick / JITTER_S
        cost = float(np.sum(err**2)) + COMPLEXITY_WEIGHT * complexity
        if cost < best_cost - 1e-9:
            best, best_cost = step, cost
    return best


def quantise_onsets(raw_ticks: np.ndarray, grid: ScoreGrid) -> np.ndarray:
    """Integer ticks for raw onset ticks, beat by beat."""
    raw = np.asarray(raw_ticks, dtype=np.float64)
    out = np.zeros(raw.size, dtype=np.int64)
    if raw.size == 0:
        return out
    # an onset belongs to the beat it lies in, or to the next one when it is just early
    beat = grid.beat_ticks
    owner = grid.pickup + np.floor((raw - grid.pickup + 0.12 * beat) / beat) * beat
    for start in np.unique(owner):
        sel = owner == start
        step = _grid_for_beat(raw[sel], int(start), grid)
        out[sel] = (int(start) + np.round((raw[sel] - start) / step) * step).astype(np.int64)
    return np.maximum(out, 0)


def quantise(notes: Sequence[Note], grid: ScoreGrid) -> list[QNote]:
    """Every note on the tick grid, at least one finest step long; same onset, pitch and stem merge."""
    if not notes:
        return []
    starts = grid.ticks(np.array([n.start_s for n in notes]))
    ends = grid.ticks(np.array([n.end_s for n in notes]))
    on = quantise_onsets(starts, grid)
    sec_per_tick = np.array([grid.beat_seconds(grid.beat_start(int(t))) for t in on]) / grid.beat_ticks
    onset_ticks = np.unique(on)
    out: dict[tuple[int, int, str], QNote] = {}
    for i, n in enumerate(notes):
        off = _quantise_offset(int(on[i]), float(ends[i]), float(sec_per_tick[i]), onset_ticks, grid.finest)
        k = (int(on[i]), n.pitch, n.stem)
        q = out.get(k)
        if q is None:
            out[k] = QNote(int(on[i]), off, n.pitch, n.velocity, n.stem)
        else:
            q.off = max(q.off, off)
            q.velocity = max(q.velocity, n.velocity)
    qs = sorted(out.values(), key=lambda q: (q.on, q.pitch))
    _cut_same_pitch_overlaps(qs)
    return qs


def _quantise_offset(on: int, raw_off: float, sec_per_tick: float, onset_ticks: np.ndarray, finest: int) -> int:
    later = onset_ticks[onset_ticks > on]
    if later.size:
        tolerance = max(LEGATO_S / sec_per_tick, 0.25 * (raw_off - on))
        near = later[np.abs(later - raw_off) <= tolerance]
        if near.size:
            return int(near[np.argmin(np.abs(near - raw_off))])
    step = EIGHTH if raw_off - on >= 0.75 * EIGHTH else max(EIGHTH // 2, finest)
    off = int(round(raw_off / step) * step)
    return max(off, on + finest)


def _cut_same_pitch_overlaps(qs: list[QNote]) -> None:
    """A note ends where the next note of its pitch starts (a re-struck key)."""
    last: dict[tuple[int, str], QNote] = {}
    for q in qs:
        prev = last.get((q.pitch, q.stem))
        if prev is not None and prev.off > q.on:
            prev.off = q.on
        last[(q.pitch, q.stem)] = q


TEMPO_TOLERANCE_S = 0.025
"""A new tempo mark is written only where keeping the current one would put the
performance this far off the written beat: a tempo change that persists, not rubato."""


def tempo_marks(grid: ScoreGrid, n_measures: int) -> list[tuple[int, float]]:
    """(measure index, quarter-note BPM) of each tempo mark, the first at measure 0.

    Greedy segmentation of the measures: a segment's tempo is the one that takes its
    first barline to its last exactly, and it grows while every barline inside stays
    within :data:`TEMPO_TOLERANCE_S` of where that tempo puts it. ``n_measures`` should
    end with the music: beyond it the beats are extrapolated, not heard.
    """
    starts = np.array([grid.measure_start(i) for i in range(n_measures + 1)], dtype=np.float64)
    times = grid.seconds(starts)
    marks: list[tuple[int, float]] = []
    a = 0
    while a < n_measures:
        b = a + 1
        while b < n_measures and _fits(starts, times, a, b + 1):
            b += 1
        rate = (starts[b] - starts[a]) / max(times[b] - times[a], 1e-9)  # ticks per second
        bpm = float(rate * 60.0 / TPQ)
        if not marks or round(bpm) != round(marks[-1][1]):
            marks.append((a, bpm))
        a = b
    return marks


def _fits(starts: np.ndarray, times: np.ndarray, a: int, b: int) -> bool:
    rate = (starts[b] - starts[a]) / max(times[b] - times[a], 1e-9)
    predicted = times[a] + (starts[a : b + 1] - starts[a]) / rate
    return bool(np.max(np.abs(predicted - times[a : b + 1])) <= TEMPO_TOLERANCE_S)
