"""Engraving: notes on the tick grid become music21 measures a musician reads.

Each voice of each measure is a sequence of chords and rests whose values follow
the meter: a value that starts on a beat may run on as long as it can be spelt with
one note (a half note on beat 2 of 4/4 included), one that starts off the beat ends
at the next beat unless it is the simple syncopation (eighth-quarter-eighth), the
middle of a 4/4 bar shows, compound meters show every dotted-quarter beat, rests
never hide a beat. So ties appear only where a note really crosses a barline or a
beat it must show. Beams group by beat, triplets get brackets, accidentals follow
the key signature and what the bar has already said, and each staff's clef follows
its range (a left hand that climbs stays readable in a treble clef).

Measures are built complete (beams, accidentals, tuplets done), so export skips
music21's slow generic ``makeNotation`` pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

from music21 import (
    bar,
    beam,
    chord,
    clef,
    duration,
    instrument,
    key,
    layout,
    meter,
    note,
    pitch,
    stream,
    tempo,
    text,
    tie,
)

from rescored_ray.notation.meter import Meter
from rescored_ray.notation.rhythm import EIGHTH, TPQ, QNote, ScoreGrid

# --------------------------------------------------------------------------- note values

_PLAIN = (3, 6, 12, 24, 48, 96)
_SPELLABLE = frozenset(
    [
        *_PLAIN,
        *(v * 3 // 2 for v in _PLAIN[1:]),
        144,  # plain, dotted (a dotted whole = 12/8 bar)
        2,
        4,
        8,
        16,
        32,
    ]  # triplet 32nd, 16th, eighth, quarter, half
)


def spellable(ticks: int) -> bool:
    """One notehead can show this length (at most one dot, or a simple triplet)."""
    return ticks in _SPELLABLE


def _allowed(pos: int, length: int, m: Meter, rest: bool) -> bool:
    """May one note (or rest) of ``length`` ticks start ``pos`` ticks into a bar of meter ``m``?"""
    if not spellable(length):
        return False
    beat, bar_len = m.beat_tatums * EIGHTH, m.bar_tatums * EIGHTH
    end = pos + length
    half = bar_len // 2 if m.beats_per_bar == 4 else None
    if rest:
        if pos % beat == 0 and end % beat == 0:
            if length == bar_len:
                return pos == 0
            if m.compound:
                return length == beat
            if half is not None:
                return length <= 2 * beat and (pos // half == (end - 1) // half)
            return length == beat
        if pos // beat != (end - 1) // beat:
            return False
        sub = beat // 2 if not m.compound else EIGHTH
        return pos % sub == 0 or pos // sub == (end - 1) // sub
    if pos % beat == 0:
        if m.compound and length > beat and length % beat:
            return False
        if half is not None and pos not in (0, half) and pos < half < end:
            return end % beat == 0
        return True
    if pos // beat == (end - 1) // beat:
        return True
    if m.compound:
        return False
    crosses_half = half is not None and pos < half < end
    return pos % (beat // 2) == 0 and end % (beat // 2) == 0 and length in (beat, beat * 3 // 2) and not crosses_half


@lru_cache(maxsize=65536)
def value_pieces(pos: int, length: int, meter: Meter, rest: bool = False) -> tuple[int, ...]:
    """Cut ``length`` ticks starting ``pos`` ticks into a bar into the values to write (tied for notes)."""
    out: list[int] = []
    while length > 0:
        piece = next((c for c in _candidates(pos, length, meter) if _allowed(pos, c, meter, rest)), None)
        if piece is None:  # nothing metrical fits: largest spellable value, else one tick
            piece = max((c for c in _SPELLABLE if c <= length), default=1)
        out.append(piece)
        pos += piece
        length -= piece
    return tuple(out)


def _candidates(pos: int, length: int, meter: Meter) -> list[int]:
    """Lengths to try, longest first: the whole, then up to each metrical boundary inside it."""
    beat = meter.beat_tatums * EIGHTH
    cands = {length}
    for step in (
        meter.bar_tatums * EIGHTH // 2,
        beat,
        beat // 2 if beat % 2 == 0 else EIGHTH,
        EIGHTH,
        EIGHTH // 2,
        3,
    ):
        if step <= 0:
            continue
        nxt = (pos // step + 1) * step
        while nxt < pos + length:
            cands.add(nxt - pos)
            nxt += step
    cands.update(v for v in _SPELLABLE if v < length)
    return sorted(cands, reverse=True)


# --------------------------------------------------------------------------- clefs


_TREBLE_RANGE = (64, 77)  # E4..F5, the lines of a treble staff
_BASS_RANGE = (43, 57)  # G2..A3


def _ledger_cost(pitches: Sequence[int], lines: tuple[int, int]) -> float:
    lo, hi = lines
    return sum(max(0, lo - p) / 3.5 + max(0, p - hi) / 3.5 for p in pitches)


def plan_clefs(pitches_by_measure: Sequence[Sequence[int]], default: str) -> list[str]:
    """``"treble"``/``"bass"`` for each measure: fewest ledger lines, few changes, the default preferred."""
    options = ("treble", "bass")
    cost = [0.0 if o == default else 1.0 for o in options]
    back: list[list[int]] = []
    for ps in pitches_by_measure:
        here = [_ledger_cost(ps, _TREBLE_RANGE), _ledger_cost(ps, _BASS_RANGE)]
        bias = [0.0 if o == default else 0.5 for o in options]
        new, choice = [], []
        for j in range(2):
            stay, switch = cost[j], cost[1 - j] + 6.0
            choice.append(j if stay <= switch else 1 - j)
            new.append(min(stay, switch) + here[j] + bias[j])
        back.append(choice)
        cost = new
    j = 0 if cost[0] <= cost[1] else 1
    out = []
    for choice in reversed(back):
        out.append(options[j])
        j = choice[j]
    return out[::-1]


_CLEF = {"treble": clef.TrebleClef, "bass": clef.BassClef, "treble8vb": clef.Treble8vbClef}


# --------------------------------------------------------------------------- measures


@dataclass
class _Event:
    start: int
    end: int
    notes: list[tuple[QNote, bool, bool]] = field(default_factory=list)  # note, tied in, tied out


class _PresortedChord(chord.Chord):
    """A chord built in ascending pitch order.

    music21's MusicXML exporter calls ``chord.sortAscending()`` without ``inPlace``
    and throws the sorted deep copy away; on a dense piano part that wasted copy
    was most of the export time. Our chords are already sorted.
    """

    def sortAscending(self, *, inPlace: bool = False) -> Any:
        if inPlace:
            return super().sortAscending(inPlace=True)
        return self


_BEAM_COUNT = {"eighth": 1, "16th": 2, "32nd": 3, "64th": 4}
_TIE = {(False, True): "start", (True, True): "continue", (True, False): "stop"}


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


class StaffWriter:
    """Writes the measures of one staff."""

    def __init__(self, grid: ScoreGrid, spelling: dict[int, pitch.Pitch], key_sig: key.Key):
        self.grid = grid
        self.spelling = spelling  # id(QNote) -> spelled pitch
        self.key_alter = {p.step: p.accidental.alter for p in key_sig.alteredPitches}

    def measures(self, notes: Sequence[QNote], n_measures: int, clefs: Sequence[str]) -> list[stream.Measure]:
        by_measure: dict[int, list[QNote]] = defaultdict(list)
        for q in notes:
            first, last = self.grid.measure_of(q.on), self.grid.measure_of(q.off - 1)
            for i in range(first, min(last, n_measures - 1) + 1):
                by_measure[i].append(q)
        out = []
        for i in range(n_measures):
            m = self.measure(i, by_measure.get(i, []))
            if i == 0 or clefs[i] != clefs[i - 1]:
                m.coreInsert(0, _CLEF[clefs[i]]())
            m.coreElementsChanged()
            out.append(m)
        return out

    def measure(self, index: int, notes: Sequence[QNote]) -> stream.Measure:
        grid = self.grid
        start = grid.measure_start(index)
        end = grid.measure_start(index + 1)
        number = index if grid.pickup else index + 1
        m = stream.Measure(number=number)
        if grid.pickup and index == 0:
            m.showNumber = stream.enums.ShowNumber.NEVER  # MusicXML implicit="yes": an anacrusis
            m.paddingLeft = float(Fraction(grid.bar_ticks - grid.pickup, TPQ))
        voices = sorted({q.voice for q in notes}) or [1]
        if voices == [2]:
            voices = [1, 2]
        if len(voices) == 1:
            if not notes and end - start == grid.bar_ticks:
                r = note.Rest(quarterLength=Fraction(grid.bar_ticks, TPQ))
                r.fullMeasure = True
                m.coreAppend(r)
                return m
            for el in self._voice(notes, start, end, None):
                m.coreAppend(el)
        else:
            for v in voices:
                voice = stream.Voice(id=str(v))
                for el in self._voice([q for q in notes if q.voice == v], start, end, "up" if v == 1 else "down"):
                    voice.coreAppend(el)
                voice.coreElementsChanged()
                m.coreInsert(0, voice)
        m.coreElementsChanged()
        self._accidentals(m)
        if any(el.duration.tuplets for el in m.recurse().notesAndRests):
            for container in m.voices or [m]:
                stream.makeNotation.makeTupletBrackets(container, inPlace=True)
        return m

    def _events(self, notes: Sequence[QNote], start: int, end: int) -> list[_Event]:
        """One voice's chords in ``[start, end)``, in time order (a voice is sequential).

        Notes struck together are one chord; where some of them end first, the chord goes on,
        tied, with those still sounding. A later onset cuts whatever still sounds short.
        """
        by_onset: dict[int, list[tuple[QNote, int]]] = {}
        for q in notes:
            a, b = max(q.on, start), min(q.off, end)
            if b > a:
                by_onset.setdefault(a, []).append((q, b))
        onsets = sorted(by_onset)
        out: list[_Event] = []
        for i, a in enumerate(onsets):
            cut = onsets[i + 1] if i + 1 < len(onsets) else end
            group = [(q, min(b, cut), b > cut) for q, b in by_onset[a]]  # note, drawn end, cut short
            t = a
            for seg_end in sorted({b for _, b, _ in group}):
                ev = _Event(t, seg_end)
                for q, b, was_cut in group:
                    if b >= seg_end:
                        tied_in = t > a or q.on < start
                        tied_out = b > seg_end or (not was_cut and q.off > end)
                        ev.notes.append((q, tied_in, tied_out))
                out.append(ev)
                t = seg_end
        return out

    def _voice(self, notes: Sequence[QNote], start: int, end: int, stem: str | None) -> list[note.GeneralNote]:
        grid = self.grid
        elements: list[note.GeneralNote] = []
        run: list[tuple[note.NotRest, int]] = []
        run_beat: int | None = None
        cursor = start
        timeline: list[tuple[int, int, _Event | None]] = []
        for event in self._events(notes, start, end):
            if event.start > cursor:
                timeline.append((cursor, event.start, None))
            timeline.append((event.start, event.end, event))
            cursor = event.end
        if cursor < end:
            timeline.append((cursor, end, None))
        for a, b, ev in timeline:
            pos = (a - grid.pickup) % grid.bar_ticks
            pieces = value_pieces(pos, b - a, grid.meter, rest=ev is None)
            for j, ticks in enumerate(pieces):
                ql = Fraction(ticks, TPQ)
                beat_index = pos // grid.beat_ticks
                pos += ticks
                if ev is None:
                    r = note.Rest(quarterLength=ql)
                    r.fullMeasure = False  # skips a slow context lookup on export
                    elements.append(r)
                    _beam_run(run)
                    run, run_beat = [], None
                    continue
                first, last = j == 0, j == len(pieces) - 1
                members = []
                for q, tied_in, tied_out in sorted(ev.notes, key=lambda t: t[0].pitch):
                    n = note.Note(self.spelling[id(q)], quarterLength=ql)
                    n.volume.velocity = q.velocity
                    t = _TIE.get((tied_in or not first, tied_out or not last))
                    if t:
                        n.tie = tie.Tie(t)
                    members.append(n)
                el: note.NotRest = members[0] if len(members) == 1 else _PresortedChord(members, quarterLength=ql)
                if stem is not None:
                    el.stemDirection = stem
                elements.append(el)
                count = _BEAM_COUNT.get(el.duration.type, 0)
                if count == 0 or beat_index != run_beat:
                    _beam_run(run)
                    run = []
                if count:
                    run.append((el, count))
                    run_beat = beat_index
        _beam_run(run)
        return elements

    def _accidentals(self, m: stream.Measure) -> None:
        """Show an accidental where the key signature and the bar so far do not imply it."""
        state: dict[tuple[str, int], float] = {}
        heads = []
        for el in m.recurse().notes:
            offset = el.getOffsetInHierarchy(m)
            for n in el.notes if isinstance(el, chord.Chord) else [el]:
                heads.append((offset, n))
        heads.sort(key=lambda t: t[0])
        i = 0
        while i < len(heads):
            j = i
            while j < len(heads) and heads[j][0] == heads[i][0]:
                j += 1
            group = [n for _, n in heads[i:j]]
            clash: dict[tuple[str, int], int] = defaultdict(int)
            for n in group:
                clash[(str(n.pitch.step), int(n.pitch.octave or 0))] += 1
            updates: dict[tuple[str, int], float] = {}
            for n in group:
                p = n.pitch
                slot = (str(p.step), int(p.octave or 0))
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
            i = j


# --------------------------------------------------------------------------- parts


@dataclass
class StaffPlan:
    notes: list[QNote]
    default_clef: str  # treble | bass | treble8vb


@dataclass
class PartPlan:
    """One part of the score: a stem on one staff, or on a grand staff."""

    part_id: str
    name: str
    instrument: instrument.Instrument
    staves: list[StaffPlan]


def build_part(
    plan: PartPlan, grid: ScoreGrid, n_measures: int, spelling: dict[int, pitch.Pitch], key_sig: key.Key
) -> list[stream.Part]:
    """The music21 part(s) of one plan: a :class:`stream.Part`, or two :class:`stream.PartStaff`."""
    writer = StaffWriter(grid, spelling, key_sig)
    grand = len(plan.staves) > 1
    out = []
    for s, staff in enumerate(plan.staves):
        if staff.default_clef == "treble8vb":
            clefs = ["treble8vb"] * n_measures
        else:
            pitches: list[list[int]] = [[] for _ in range(n_measures)]
            for q in staff.notes:
                i = grid.measure_of(q.on)
                if 0 <= i < n_measures:
                    pitches[i].append(q.pitch)
            clefs = plan_clefs(pitches, staff.default_clef)
        measures = writer.measures(staff.notes, n_measures, clefs)
        first = measures[0]
        first.coreInsert(0, key.Key(key_sig.tonic.name, key_sig.mode))
        first.coreInsert(0, meter.TimeSignature(grid.meter.ratio))
        first.coreElementsChanged()
        measures[-1].rightBarline = bar.Barline("final")
        part = stream.PartStaff() if grand else stream.Part()
        part.id = f"{plan.part_id}-{'rh' if s == 0 else 'lh'}" if grand else plan.part_id
        part.partName = plan.name
        part.coreInsert(0, plan.instrument if s == 0 else _copy_instrument(plan.instrument))
        offset = Fraction(0)
        for i, m in enumerate(measures):
            part.coreInsert(offset, m)
            offset += Fraction(grid.measure_start(i + 1) - grid.measure_start(i), TPQ)
        part.coreElementsChanged()
        part.streamStatus.accidentals = True
        part.streamStatus.beams = True
        part.streamStatus.tuplets = True
        out.append(part)
    return out


def _copy_instrument(inst: instrument.Instrument) -> instrument.Instrument:
    twin = type(inst)()
    twin.partName = inst.partName
    return twin


# An A4 page in MusicXML tenths (7 mm to 40 tenths), with the margins music notation software uses.
_PAGE_WIDTH, _PAGE_HEIGHT, _MARGIN = 1200, 1697, 80


def add_credits(score: stream.Score, title: str, artist: str | None, credit: str) -> None:
    """The page header as credits: the title centred, the artist right, our credit left.

    Explicit credits, placed on a page of known size, are what MuseScore and verovio both
    draw where a reader expects them; creator fields alone never showed our credit.
    """
    page = layout.PageLayout(
        pageHeight=_PAGE_HEIGHT,
        pageWidth=_PAGE_WIDTH,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=_MARGIN,
        bottomMargin=_MARGIN,
    )
    score.insert(0, layout.ScoreLayout(scalingMillimeters=7.0, scalingTenths=40, pageLayout=page))
    lines = [(title, _PAGE_WIDTH / 2, _PAGE_HEIGHT - _MARGIN, 22, "center", "top")]
    if artist:
        lines.append((artist, _PAGE_WIDTH - _MARGIN, _PAGE_HEIGHT - 157, 10, "right", "bottom"))
    lines.append((credit, _MARGIN, _PAGE_HEIGHT - 157, 10, "left", "bottom"))
    for content, x, y, size, justify, valign in lines:
        box = text.TextBox(content, x, y)
        style: Any = box.style  # a TextStyle at runtime; music21 annotates it as the base Style
        style.justify = justify
        style.alignHorizontal = justify
        style.alignVertical = valign
        style.fontSize = size
        score.insert(0, box)


def add_grand_staff(score: stream.Score, staves: list[stream.Part], name: str) -> None:
    score.coreInsert(0, layout.StaffGroup(staves, name=name, symbol="brace", barTogether=True))


def tempo_mark(quarter_bpm: float, meter: Meter) -> tempo.MetronomeMark:
    """A metronome mark in the meter's beat (a dotted quarter in compound meters, a half in
    2/2): a readable whole number printed, the exact tempo for playback."""
    beat_ql = float(meter.beat_ql)
    beat_bpm = quarter_bpm / beat_ql
    mm = tempo.MetronomeMark(number=round(beat_bpm), referent=duration.Duration(beat_ql))
    mm.numberSounding = round(beat_bpm, 3)
    return mm
