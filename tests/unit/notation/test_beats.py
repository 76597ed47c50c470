"""Beats: the tempo map, and the beats tracked from notes and audio."""

from __future__ import annotations

import mir_eval
import numpy as np
import pytest

from rescored_ray.notation.beats import TempoMap, eighth_grid, subdivision, track_beats
from rescored_ray.types import Note


def test_tempo_map_maps_both_ways_and_extrapolates():
    tm = TempoMap(np.array([1.0, 1.5, 2.1, 2.8]))
    assert tm.position(1.5) == pytest.approx(1.0)
    assert tm.position(1.8) == pytest.approx(1.5)
    assert tm.position(0.5) == pytest.approx(-1.0)  # before: the first period
    assert tm.position(3.5) == pytest.approx(4.0)  # after: the last period
    xs = np.linspace(-2, 6, 33)
    assert tm.position(tm.time(xs)) == pytest.approx(xs)
    halves = tm.subdivide(2)
    assert halves.times.tolist() == pytest.approx([1.0, 1.25, 1.5, 1.8, 2.1, 2.45, 2.8])
    with pytest.raises(ValueError):
        TempoMap(np.array([1.0, 1.0]))


def _drifting_pulse(start_bpm: float, end_bpm: float, beats: int, offbeats: bool = True):
    """Quarter notes (and some eighths) of a tempo that ramps; returns (notes, beat times)."""
    bpm = np.linspace(start_bpm, end_bpm, beats)
    times = np.concatenate([[0.5], 0.5 + np.cumsum(60.0 / bpm[:-1])])
    rng = np.random.default_rng(3)
    notes = []
    for i, t in enumerate(times):
        jitter = float(rng.normal(0, 0.01))
        notes.append(Note(t + jitter, t + 0.4, 60 + (i * 5) % 12, 90))
        notes.append(Note(t + jitter, t + 0.4, 48, 80))
        if offbeats and i % 2 and i + 1 < len(times):
            mid = (t + times[i + 1]) / 2
            notes.append(Note(mid, mid + 0.2, 67, 60))
    return notes, times


def test_beats_follow_a_performance_that_drifts():
    notes, truth = _drifting_pulse(92, 104, 64)  # 13 % faster by the end
    tracked = track_beats(notes)
    assert tracked is not None
    assert mir_eval.beat.f_measure(truth, tracked.times) >= 0.95
    late = tracked.periods()[-8:].mean()
    early = tracked.periods()[:8].mean()
    assert late < early * 0.93  # a tempo map, not one global tempo


def test_too_little_to_go_on_gives_no_beats():
    assert track_beats([]) is None
    assert track_beats([Note(0.0, 0.5, 60), Note(0.5, 1.0, 62)]) is None


def test_subdivision_and_eighth_grid():
    beats = TempoMap.constant(0.6, 0.0, 12.0)
    halves = np.concatenate([np.arange(0, 12, 0.6), np.arange(0.3, 12, 1.2)])
    thirds = np.concatenate([np.arange(0, 12, 0.6), np.arange(0.2, 12, 0.6), np.arange(0.4, 12, 1.2)])
    assert subdivision(beats, halves) == 2
    assert subdivision(beats, thirds) == 3
    assert np.median(eighth_grid(beats, halves).periods()) == pytest.approx(0.3)
    assert np.median(eighth_grid(beats, thirds).periods()) == pytest.approx(0.2)
    slow = TempoMap.constant(1.2, 0.0, 12.0)  # a half-note pulse: four eighths to a beat
    assert np.median(eighth_grid(slow, halves).periods()) == pytest.approx(0.3)
