"""Key, mode and pitch spelling."""

from __future__ import annotations

import pytest
from music21 import key

from rescored_ray.errors import NonRetryableError
from rescored_ray.notation import estimate_key
from rescored_ray.notation.spell import key_signature_for, parse_key, spell
from rescored_ray.types import Note


def _scale_and_cadence(scale: list[int], triads: list[tuple[int, ...]]) -> list[Note]:
    notes = [Note(i * 0.5, i * 0.5 + 0.5, p) for i, p in enumerate(scale)]
    for i, triad in enumerate(triads):
        notes += [Note(4.0 + i, 5.0 + i, p) for p in triad]
    return notes


def test_estimate_key_major_minor_transposed_and_default():
    c = _scale_and_cadence([60, 62, 64, 65, 67, 69, 71, 72], [(48, 64, 67), (53, 69, 72), (55, 71, 74), (48, 64, 67)])
    assert estimate_key(c) == "C major"
    a = _scale_and_cadence([57, 59, 60, 62, 64, 65, 68, 69], [(45, 60, 64), (50, 65, 69), (52, 68, 71), (45, 60, 64)])
    assert estimate_key(a) == "A minor"
    eb = [Note(n.start_s, n.end_s, n.pitch + 3) for n in c]
    assert estimate_key(eb) == "Eb major"
    assert estimate_key([]) == "C major"


@pytest.mark.parametrize(
    "text, tonic, mode, sharps",
    [
        ("Gm", "G", "minor", -2),
        ("G minor", "G", "minor", -2),
        ("F#", "F#", "major", 6),
        ("Bb major", "B-", "major", -2),
        ("e", "E", "minor", 1),
    ],
)
def test_parse_key(text, tonic, mode, sharps):
    k = parse_key(text)
    assert (k.tonic.name, k.mode, k.sharps) == (tonic, mode, sharps)


@pytest.mark.parametrize("bad", ["H major", "C lydian", "xyz", "G##m#", ""])
def test_parse_key_refuses_garbage_permanently(bad):
    with pytest.raises(NonRetryableError) as info:
        parse_key(bad)
    assert info.value.stage == "notation" and info.value.retryable is False


def test_spelling_follows_the_tonal_context():
    # An F major scale and cadence: the fourth degree is B-flat, never A-sharp.
    f_major = [65, 67, 69, 70, 72, 74, 76, 77, 70, 74, 77, 72, 76, 79]
    names = [p.name for p in spell(range(len(f_major)), [1] * len(f_major), f_major, key.Key("F"))]
    assert "B-" in names and "A#" not in names
    # C# major: E# and B# where the music says so.
    c_sharp = [61, 63, 65, 66, 68, 70, 72, 73, 65, 68, 73, 72]
    named = {p.name for p in spell(range(len(c_sharp)), [1] * len(c_sharp), c_sharp, key.Key("C#"))}
    assert {"E#", "B#"} <= named
    # Spelled pitches sound at the same MIDI number, octave included.
    spelled = spell(range(len(c_sharp)), [1] * len(c_sharp), c_sharp, key.Key("C#"))
    assert [round(p.ps) for p in spelled] == c_sharp


def test_key_signature_takes_the_enharmonic_the_notes_use():
    flats = spell(range(6), [1] * 6, [61, 63, 65, 66, 68, 70], key.Key("D-"))
    assert key_signature_for(key.Key("C#"), flats).sharps in (-5, 7)
    db = key_signature_for(key.Key("D-"), flats)
    assert db.tonic.name in ("D-", "C#")
