"""Hands and voices."""

from __future__ import annotations

from rescored_ray.notation.beats import TempoMap
from rescored_ray.notation.meter import Meter
from rescored_ray.notation.rhythm import TPQ, QNote, ScoreGrid
from rescored_ray.notation.voices import (
    absorb_short_rests,
    assign_hands,
    assign_voices,
    is_line,
    legato,
    line_ghosts,
)

E = TPQ // 2


def test_an_alberti_bass_above_middle_c_stays_in_the_left_hand():
    notes = []
    for bar in range(4):  # C4-G4-E4-G4 eighths under a melody in the fifth octave
        for i, p in enumerate((60, 67, 64, 67, 60, 67, 64, 67)):
            notes.append(QNote(bar * 4 * TPQ + i * E, bar * 4 * TPQ + (i + 1) * E, p))
        notes.append(QNote(bar * 4 * TPQ, bar * 4 * TPQ + 2 * TPQ, 76 + bar))
        notes.append(QNote(bar * 4 * TPQ + 2 * TPQ, bar * 4 * TPQ + 4 * TPQ, 74 + bar))
    hands = assign_hands(notes)
    assert all(h == 1 for q, h in zip(notes, hands, strict=False) if q.pitch < 70)
    assert all(h == 0 for q, h in zip(notes, hands, strict=False) if q.pitch >= 74)


def test_a_single_line_gets_one_staff():
    line = [QNote(i * TPQ, (i + 1) * TPQ, p) for i, p in enumerate([55, 60, 64, 67, 72, 76, 79, 74, 71, 67, 62, 59])]
    assert len(set(assign_hands(line))) == 1


def _ringing_tune() -> list[QNote]:
    """A flute tune from a room: each eighth rings on through the next (loud, 90-100)."""
    pitches = [65, 70, 70, 74, 72, 70, 69, 67, 65, 70, 74, 77, 75, 74, 72, 70] * 2
    return [QNote(i * E, i * E + 2 * E - 1, p, velocity=90 + i % 10) for i, p in enumerate(pitches)]


def test_a_ringing_melody_is_a_line_and_loses_only_its_quiet_far_ghosts():
    tune = _ringing_tune()
    assert is_line(tune)
    subharmonic = QNote(4 * E, 5 * E, 44, velocity=50)  # struck with the line's C5, two octaves under
    rumble = QNote(11 * E + 3, 12 * E, 46, velocity=52)  # alone, between two notes of the line
    double_stop = QNote(8 * E, 9 * E, 62, velocity=60)  # quiet but inside the line's range: music
    leap = QNote(32 * E, 34 * E, 53, velocity=95)  # far below, but as loud as the line: a real leap
    notes = [*tune, subharmonic, rumble, double_stop, leap]
    assert is_line(notes)
    assert {id(q) for q in line_ghosts(notes)} == {id(subharmonic), id(rumble)}
    line = [q for q in notes if q not in (subharmonic, rumble)]
    assert len(set(assign_hands(line))) == 1  # one staff, though every note overlaps the next
    legato(tune, TPQ, line=True)
    assign_voices(tune)
    assert {q.voice for q in tune} == {1}  # and one voice: each note ends where the next begins
    assert all(q.off == q.on + E for q in tune[:-1])


def test_chords_and_accompaniments_are_not_lines_and_keep_every_note():
    chords = [QNote(i * TPQ, (i + 1) * TPQ, p, velocity=v) for i in range(8) for p, v in ((48, 50), (64, 80), (72, 90))]
    assert not is_line(chords) and line_ghosts(chords) == []
    held = [QNote(0, 4 * TPQ, 48, velocity=40)] + [QNote(i * E, (i + 1) * E, 72 + i % 5) for i in range(8)]
    held += [QNote(4 * TPQ + k * 4 * TPQ, 8 * TPQ + k * 4 * TPQ, 48, velocity=40) for k in range(2)]
    held += [QNote(4 * TPQ + i * E, 4 * TPQ + (i + 1) * E, 72 + i % 5) for i in range(16)]
    assert not is_line(held)  # a bass held under moving notes is two lines, however quiet


def test_a_held_note_under_moving_notes_gets_its_own_voice():
    held = QNote(0, 2 * TPQ, 60)
    moving = [QNote(0, TPQ, 67), QNote(TPQ, 2 * TPQ, 69)]
    notes = [held, *moving]
    legato(notes, TPQ)
    assign_voices(notes)
    assert held.voice == 2 and {q.voice for q in moving} == {1}


def test_chords_struck_together_stay_one_voice():
    chords = [QNote(i * TPQ, i * TPQ + TPQ - 5 + k, p) for i in range(4) for k, p in enumerate((60, 64, 67))]
    legato(chords, TPQ)
    assign_voices(chords)
    assert {q.voice for q in chords} == {1}
    assert {q.off - q.on for q in chords if q.on < 3 * TPQ} == {TPQ}


def test_short_gaps_are_absorbed_real_rests_start_on_a_beat():
    grid = ScoreGrid(TempoMap.constant(0.3, 0.0, 30.0), Meter(2, 4), origin=0.0, pickup=0)
    notes = [QNote(0, TPQ - 4, 60), QNote(TPQ, TPQ + TPQ // 4, 62), QNote(4 * TPQ, 5 * TPQ, 64)]
    for q in notes:
        q.voice = 1
    absorb_short_rests(notes, grid)
    assert notes[0].off == TPQ  # a short gap: held to the next note
    assert notes[1].off == 2 * TPQ  # a sixteenth before two beats of rest: held to the end of its beat
    assert notes[2].off == 5 * TPQ
