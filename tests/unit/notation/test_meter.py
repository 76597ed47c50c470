"""Meter and bar phase, from the fitted model."""

from __future__ import annotations

import numpy as np
import pytest

from rescored_ray.notation.meter import FEATURES, METERS, Meter, TatumNotes, choose_meter, default_model


@pytest.mark.parametrize(
    "text, beat, beats, ratio",
    [
        ("2/4", 2, 2, "2/4"),
        ("3/4", 2, 3, "3/4"),
        ("6/8", 3, 2, "6/8"),
        ("12/8", 3, 4, "12/8"),
        ("2/2", 4, 2, "2/2"),
        ("7/8", 1, 7, "7/8"),
        (" 4/4 ", 2, 4, "4/4"),
    ],
)
def test_meter_parse(text, beat, beats, ratio):
    m = Meter.parse(text)
    assert (m.beat_tatums, m.beats_per_bar, m.ratio) == (beat, beats, ratio)


@pytest.mark.parametrize("bad", ["banana", "4/3", "0/4", "3/16", "", "4"])
def test_meter_parse_refuses(bad):
    assert Meter.parse(bad) is None


def test_model_matches_the_features():
    ensemble = default_model()
    assert ensemble.members
    for model in ensemble.members:
        assert model.mean.shape == (len(FEATURES),) and model.w1.shape[0] == len(FEATURES)


def _notes(events: list[tuple[float, float, int]]) -> TatumNotes:
    """(onset, length, pitch) in eighths -> the model's sixteenth grid."""
    return TatumNotes.from_arrays(
        [2 * a for a, _, _ in events], [2 * (a + d) for a, d, _ in events], [p for _, _, p in events]
    )


def _bars(pattern, bars: int, bar_len: int, start: float = 0.0, melody=(72, 74, 76, 77, 79, 76, 74, 72)):
    out = []
    for b in range(bars):
        for on, dur, voice in pattern:
            pitch = melody[(b + int(on)) % len(melody)] if voice == "m" else (48 if b % 2 == 0 else 43)
            out.append((start + b * bar_len + on, dur, pitch))
    return out


def test_a_waltz_is_in_three_with_its_pickup():
    # bass on the downbeat, chords on 2 and 3, a melody with a long note on 1; a one-beat pickup
    waltz = [(0, 2, "b"), (2, 2, "c"), (4, 2, "c"), (0, 4, "m"), (4, 2, "m")]
    events = [(0.0, 2.0, 67)] + [(a, d, p if p != 0 else 60) for a, d, p in _bars(waltz, 12, 6, start=2.0)]
    events = [(a, d, 64 if p == 43 else p) for a, d, p in events]
    choice = choose_meter(_notes(events))
    assert choice.meter.ratio == "3/4"
    assert choice.pickup_units == 4  # one quarter before the first downbeat


def test_a_jig_is_in_compound_time():
    jig = [(0, 2, "m"), (2, 1, "m"), (3, 2, "m"), (5, 1, "m")]
    events = [(a, d, p) for a, d, p in _bars(jig, 16, 6)]
    choice = choose_meter(_notes(events), [m for m in METERS if m.compound])
    assert choice.meter.ratio == "6/8"
    assert choice.pickup_units == 0


def test_a_fixed_meter_still_finds_the_phase():
    march = [(0, 4, "b"), (0, 2, "m"), (2, 2, "m"), (4, 4, "m"), (4, 4, "b")]
    events = [(0.0, 2.0, 67), *_bars(march, 12, 8, start=2.0)]
    choice = choose_meter(_notes(events), [Meter(2, 4)])
    assert choice.meter.ratio == "4/4" and choice.pickup_units == 4
    assert np.isinf(choice.margin)  # nothing to compare against
