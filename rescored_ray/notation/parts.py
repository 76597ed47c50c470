"""Parts: one per stem, named after it, on the staves its role and range call for.

Vocals get a voice staff, bass a bass clef, guitar the conventional treble-8vb
clef; everything else (the other stem, a piano stem, or the whole mix when nothing
was separated) is a keyboard part on a grand staff, or on one staff when it is a
single line. Score order is the conventional one, top to bottom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from music21 import instrument

from rescored_ray.notation import voices
from rescored_ray.notation.engrave import PartPlan, StaffPlan
from rescored_ray.notation.rhythm import QNote, ScoreGrid

_ROLE_ORDER = {"vocals": 0, "guitar": 1, "keyboard": 2, "bass": 3}
_NAMES = {
    "vocals": "Vocals",
    "bass": "Bass",
    "guitar": "Guitar",
    "piano": "Piano",
    "other": "Other",
    "mix": "Piano (mix)",
}


def role_of(stem: str) -> str:
    s = stem.strip().lower()
    if s in ("vocals", "vocal", "voice"):
        return "vocals"
    if s in ("bass", "guitar"):
        return s
    return "keyboard"


def part_name(stem: str) -> str:
    """The stem's name as a part name (``other`` -> ``Other``, the unseparated mix -> ``Piano (mix)``)."""
    s = stem.strip()
    return _NAMES.get(s.lower(), s[:1].upper() + s[1:] if s else "Piano")


def _instrument(role: str, name: str) -> instrument.Instrument:
    inst: instrument.Instrument = {
        "vocals": instrument.Vocalist,
        "bass": instrument.ElectricBass,
        "guitar": instrument.Guitar,
    }.get(role, instrument.Piano)()
    inst.partName = name
    return inst


def _single_staff_clef(notes: Sequence[QNote], role: str) -> str:
    if role == "guitar":
        return "treble8vb"
    if role == "bass":
        return "bass"
    pitches = sorted(q.pitch for q in notes)
    median = pitches[len(pitches) // 2] if pitches else 67
    if role == "vocals" and 48 <= median < 60:
        return "treble8vb"  # a tenor or baritone line reads in the tenor's clef
    return "treble" if median >= 57 else "bass"


def _finish_staff(notes: list[QNote], grid: ScoreGrid) -> None:
    voices.legato(notes, grid.beat_ticks, line=voices.is_line(notes))
    voices.assign_voices(notes)
    voices.absorb_short_rests(notes, grid)
    voices.balance_measures(notes, grid)
    voices.keep_voices_sequential(notes)


def plan_parts(placed: Mapping[str, list[QNote]], grid: ScoreGrid) -> list[PartPlan]:
    """How each stem's notes are laid out: staves, clefs, voices (sets ``staff`` and ``voice``)."""
    plans = []
    for stem, qs in sorted(placed.items(), key=lambda kv: _ROLE_ORDER[role_of(kv[0])]):
        role = role_of(stem)
        name = part_name(stem)
        ghosts = {id(q) for q in voices.line_ghosts(qs)}
        qs = [q for q in qs if id(q) not in ghosts]  # a melody's stray notes are not written
        inst = _instrument(role, name)
        if role == "keyboard":
            hands = voices.assign_hands(qs, grid.beat_ticks)
            upper = [q for q, h in zip(qs, hands, strict=False) if h == 0]
            lower = [q for q, h in zip(qs, hands, strict=False) if h == 1]
            if upper and lower:
                for q in lower:
                    q.staff = 1
                _finish_staff(upper, grid)
                _finish_staff(lower, grid)
                plans.append(PartPlan(stem, name, inst, [StaffPlan(upper, "treble"), StaffPlan(lower, "bass")]))
                continue
        _finish_staff(qs, grid)
        plans.append(PartPlan(stem, name, inst, [StaffPlan(qs, _single_staff_clef(qs, role))]))
    return plans
