"""What the notation tests read back from scores: sounding notes, per-staff pitches, MIDI notes."""

from __future__ import annotations

from pathlib import Path

import mido
from music21 import chord, converter, stream


def parse_xml(path: Path) -> stream.Score:
    # No pickle cache: every test must read what was actually written.
    parsed = converter.parse(str(path), format="musicxml", forceSource=True, storePickle=False)
    assert isinstance(parsed, stream.Score)
    return parsed


def written_notes(score: stream.Score) -> list[tuple[float, int, float]]:
    """(onset, midi, length) in quarter notes for every note of a score, tied pieces joined."""
    out: list[tuple[float, int, float]] = []
    for part in score.parts:
        held: dict[int, list[float]] = {}
        elements = sorted(
            ((float(el.getOffsetInHierarchy(part)), el) for el in part.recurse().notes),
            key=lambda t: t[0],
        )
        for offset, el in elements:
            ql = float(el.quarterLength)
            for n in el.notes if isinstance(el, chord.Chord) else [el]:
                t = n.tie.type if n.tie is not None else None
                midi = n.pitch.midi
                if t in ("continue", "stop") and midi in held:
                    held[midi][1] += ql
                else:
                    held[midi] = [offset, ql]
                if t in (None, "stop"):
                    on, dur = held.pop(midi)
                    out.append((on, midi, dur))
        assert not held, f"unterminated ties in {part.partName}: {held}"
    return sorted(out)


def staff_pitches(part: stream.Stream) -> list[int]:
    return sorted(p.midi for el in part.recurse().notes for p in el.pitches)


def midi_notes(path: Path) -> list[tuple[int, int, int]]:
    """(start_tick, end_tick, pitch) of every note in a MIDI file."""
    mf = mido.MidiFile(str(path))
    out = []
    for track in mf.tracks:
        now, open_ = 0, {}
        for msg in track:
            now += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                open_[msg.note] = now
            elif msg.type in ("note_off", "note_on"):
                out.append((open_.pop(msg.note), now, msg.note))
    return sorted(out)


def tied_fraction(score: stream.Score) -> float:
    heads = ties = 0
    for el in score.recurse().notes:
        for n in el.notes if isinstance(el, chord.Chord) else [el]:
            heads += 1
            ties += n.tie is not None
    return ties / heads if heads else 0.0
