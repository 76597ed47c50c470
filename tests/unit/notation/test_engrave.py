"""Engraving: note values by the meter, clefs by range."""

from __future__ import annotations

import numpy as np
import pytest

from rescored_ray.notation.engrave import plan_clefs, spellable, value_pieces
from rescored_ray.notation.meter import Meter
from rescored_ray.notation.rhythm import TPQ

Q, E, S = TPQ, TPQ // 2, TPQ // 4


def _meter(ratio: str) -> Meter:
    meter = Meter.parse(ratio)
    assert meter is not None
    return meter


@pytest.mark.parametrize(
    "ratio, pos, length, rest, pieces",
    [
        ("4/4", 0, 4 * Q, False, (4 * Q,)),  # whole note
        ("4/4", Q, 2 * Q, False, (2 * Q,)),  # half note on beat 2: a syncopation, not tied
        ("4/4", 0, 3 * Q, False, (3 * Q,)),  # dotted half
        ("4/4", E, Q, False, (Q,)),  # eighth-quarter-eighth
        ("4/4", Q + E, 2 * Q, False, (E, 3 * E)),  # off-beat across the middle of the bar: tied there
        ("4/4", 0, 5 * E, False, (2 * Q, E)),  # not one value: half tied to eighth
        ("4/4", Q, 2 * Q, True, (Q, Q)),  # rests never hide a beat...
        ("4/4", 0, 2 * Q, True, (2 * Q,)),  # ...except a half rest on 1 or 3
        ("3/4", 0, 3 * Q, False, (3 * Q,)),
        ("6/8", 0, 3 * E, False, (3 * E,)),  # dotted quarter beat
        ("6/8", 0, 2 * E, False, (2 * E,)),  # quarter + eighth in a beat
        ("6/8", E, 3 * E, False, (2 * E, E)),  # across the second beat: tied on it
        ("6/8", 0, 4 * E, False, (3 * E, E)),  # a half note does not show the beat: tied
        ("6/8", 0, 6 * E, False, (6 * E,)),  # dotted half: the whole bar
        ("2/4", E + S, 3 * S, False, (S, E)),  # dotted rhythm inside a beat
    ],
)
def test_values_follow_the_meter(ratio, pos, length, rest, pieces):
    got = value_pieces(pos, length, _meter(ratio), rest)
    assert got == pieces
    assert all(spellable(p) for p in got)


def test_every_length_is_written_with_spellable_values():
    meter = _meter("4/4")
    for pos in range(0, 4 * Q, 3):
        for length in range(1, 4 * Q - pos + 1):
            pieces = value_pieces(pos, length, meter)
            assert sum(pieces) == length


def test_clefs_follow_the_range():
    low_then_high = [[40, 43, 45]] * 3 + [[64, 67, 72, 76]] * 4 + [[41, 45]] * 3
    assert plan_clefs(low_then_high, "bass") == ["bass"] * 3 + ["treble"] * 4 + ["bass"] * 3
    # one stray high note does not switch clefs
    assert plan_clefs([[43, 47]] * 3 + [[65]] + [[45]] * 3, "bass") == ["bass"] * 7
    assert plan_clefs([[]] * 4, "treble") == ["treble"] * 4
    assert np.all(np.array(plan_clefs([[36, 40]] * 2, "treble")) == "bass")
