"""Note values: quantisation onto the metrical grid, legato offsets, tempo marks."""

from __future__ import annotations

import numpy as np

from rescored_ray.notation.beats import TempoMap
from rescored_ray.notation.meter import Meter
from rescored_ray.notation.rhythm import TEMPO_TOLERANCE_S, TPQ, ScoreGrid, quantise, tempo_marks
from rescored_ray.types import Note


def _grid(bpm: float = 100.0, meter: Meter = Meter(2, 4), ramp_to: float | None = None, bars: int = 16) -> ScoreGrid:
    n = bars * meter.bar_tatums + 1
    per = np.full(n - 1, 30.0 / bpm)
    if ramp_to is not None:
        per = 30.0 / np.linspace(bpm, ramp_to, n - 1)
    return ScoreGrid(TempoMap(np.concatenate([[0.0], np.cumsum(per)])), meter, origin=0.0, pickup=0)


def test_jittered_quarters_stay_quarters():
    grid = _grid(100)
    rng = np.random.default_rng(0)
    notes = [Note(i * 0.6 + float(rng.uniform(-0.03, 0.03)), i * 0.6 + 0.5, 60 + i % 5) for i in range(16)]
    qs = quantise(notes, grid)
    assert [q.on for q in qs] == [i * TPQ for i in range(16)]
    assert {q.off - q.on for q in qs[:-1]} == {TPQ}  # legato: each held to the next onset


def test_triplets_only_where_they_fit_clearly():
    grid = _grid(90)
    beat = 60 / 90
    triplets = [Note(beat * (k + j / 3), beat * (k + j / 3) + 0.15, 67) for k in range(4) for j in range(3)]
    assert {q.on % TPQ for q in quantise(triplets, grid)} == {0, 8, 16}
    sixteenths = [Note(beat * (k + j / 4) + 0.01, beat * (k + j / 4) + 0.1, 67) for k in range(4) for j in range(4)]
    assert {q.on % TPQ for q in quantise(sixteenths, grid)} == {0, 6, 12, 18}


def test_a_drifting_performance_stays_on_the_grid():
    grid = _grid(92, ramp_to=104)
    quarters = [Note(float(grid.seconds(i * TPQ)) + 0.015, float(grid.seconds(i * TPQ + 18)), 64) for i in range(60)]
    assert [q.on for q in quantise(quarters, grid)] == [i * TPQ for i in range(60)]


def test_offsets_snap_legato_or_round_to_simple_values():
    grid = _grid(120)
    notes = [Note(0.0, 0.46, 60), Note(0.5, 0.6, 62), Note(2.0, 2.95, 64)]
    a, b, c = quantise(notes, grid)
    assert a.off == TPQ  # 40 ms short of the next onset: legato
    assert b.off - b.on == TPQ // 4  # a real staccato sixteenth
    assert c.off - c.on == 2 * TPQ  # rounded to the eighth: a half note


def test_one_tempo_mark_for_a_steady_tempo_a_few_for_a_ramp():
    steady = tempo_marks(_grid(96), 16)
    assert [(i, round(b, 1)) for i, b in steady] == [(0, 96.0)]
    grid = _grid(92, ramp_to=100)
    marks = tempo_marks(grid, 16)
    assert 2 <= len(marks) <= 6
    assert [b for _, b in marks] == sorted(b for _, b in marks)
    # playing the marks back keeps every barline within the tolerance of the performance
    starts = np.array([grid.measure_start(i) for i in range(17)], dtype=float)
    actual = grid.seconds(starts)
    t, played = 0.0, [0.0]
    bpm_at = dict(marks)
    bpm = marks[0][1]
    for i in range(16):
        bpm = bpm_at.get(i, bpm)
        t += (starts[i + 1] - starts[i]) / TPQ * 60.0 / bpm
        played.append(t)
    assert np.max(np.abs(np.array(played) - (actual - actual[0]))) <= TEMPO_TOLERANCE_S + 0.02
