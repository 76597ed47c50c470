"""Staves and voices: which hand plays a note, and which line of its staff it belongs to.

**Hands.** A keyboard part is split between the staves by a split pitch that moves
with the music, chosen by dynamic programming over the onsets: each hand should be
playable (the notes sounding together in one hand span at most about an octave, five
fingers), each hand stays in its register unless the music takes it elsewhere, and
the split moves as little as possible. So a left-hand accompaniment that rises
above middle C stays in the left hand, because the melody sounding above it would
otherwise stretch the right hand past its reach. A part that is in effect one line
gets one staff.

**Voices.** Within a staff, notes that start and end together form chords of one
voice. Where the lines move independently (a held note under moving ones), the
staff gets a second voice: voice 1 the upper line, stems up, voice 2 the lower.
In a measure that needs two voices, chords are split between them so that each
voice reads as a line rather than a line with scattered rests.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from rescored_ray.notation.rhythm import EIGHTH, QNote, ScoreGrid

SPLITS = np.arange(36, 85)
"""Candidate split pitches: notes at or above go to the right hand."""
REACH = 12
"""Widest comfortable span of one hand, in semitones (an octave; more costs, growing)."""
SPLIT_MOVE_COST = 0.4
GAP_WEIGHT = 0.3
"""Costs of moving the split (per semitone) and reward for splitting in a wide gap: set on
the staff assignment of six piano scores (four dev-set pieces, Clara Schumann op. 17,
Chopin op. 6 no. 2), where they took agreement with the engraved hands from 0.876 to 0.897."""
HELD_TICKS = EIGHTH
"""Notes struck within this long before a moment count as held by the hand at that moment."""
ONE_STAFF_SHARE = 0.04
"""If one hand would get less than this share of the notes, the part goes on one staff."""
LINE_STRUCK_TOGETHER = 0.15
"""A line (:func:`is_line`) strikes at most this share of its notes together with another."""
LINE_HELD = 0.02
"""... and at most this share of its notes hold on under two later onsets."""
GHOST_VELOCITY = 0.7
"""A note under this share of its line's median velocity is quiet (a candidate ghost)."""
GHOST_DISTANCE = 7
"""A ghost lies more than this many semitones (a fifth) outside the range of the line it sounds under."""


# --------------------------------------------------------------------------- hands


def _slice_cost(sounding: list[int], context: list[int], split: int) -> float:
    """How awkward the notes sounding at one moment are with the hands split at ``split``.

    ``context`` (the pitches around this moment, sorted) pulls the split into the widest
    gap between the hands' registers, so a figure that wanders across middle C stays
    in one hand.
    """
    i = bisect.bisect_left(sounding, split)
    left, right = sounding[:i], sounding[i:]
    cost = 0.02 * abs(split - 60)
    j = bisect.bisect_left(context, split)
    if 0 < j < len(context):
        margin = min(split - context[j - 1], context[j] - split + 1)
        cost -= GAP_WEIGHT * min(margin, 6)
    for hand in (left, right):
        if hand:
            span = hand[-1] - hand[0]
            cost += max(0, span - REACH) * 1.5 + max(0, len(hand) - 5) * 2.0
    cost += sum(0.08 * (55 - p) for p in right if p < 55)
    cost += sum(0.08 * (p - 67) for p in left if p > 67)
    return cost


def assign_hands(notes: Sequence[QNote], context_ticks: int = 24) -> list[int]:
    """Staff of each note: 0 (right hand, treble) or 1 (left hand, bass); ``context_ticks``
    (a beat) is how far around each onset the registers are judged."""
    if not notes:
        return []
    if is_line(notes):
        lower = sorted(q.pitch for q in notes)[len(notes) // 2] < 57
        return [1 if lower else 0] * len(notes)
    onsets = sorted({q.on for q in notes})
    by_tick = {t: i for i, t in enumerate(onsets)}
    starts = sorted(notes, key=lambda q: q.on)
    start_ticks = [q.on for q in starts]
    ends = sorted(notes, key=lambda q: q.off)
    sounding: dict[int, int] = defaultdict(int)
    emit = np.zeros((len(onsets), SPLITS.size))
    si = ei = 0
    for s, t in enumerate(onsets):
        while ei < len(ends) and ends[ei].off <= t:
            sounding[ends[ei].pitch] -= 1
            ei += 1
        while si < len(starts) and starts[si].on <= t:
            sounding[starts[si].pitch] += 1
            si += 1
        pitches = sorted(p for p, c in sounding.items() if c > 0)
        # a hand has to reach what it strikes together; what rings on from earlier is pedal
        recent = bisect.bisect_left(start_ticks, t - HELD_TICKS)
        struck = sorted({q.pitch for q in starts[recent:si] if q.off > t})
        lo, hi = bisect.bisect_left(start_ticks, t - context_ticks), bisect.bisect_right(start_ticks, t + context_ticks)
        context = sorted({*pitches, *(q.pitch for q in starts[lo:hi])})
        pitches = struck
        emit[s] = [_slice_cost(pitches, context, int(h)) for h in SPLITS]
    move = SPLIT_MOVE_COST * np.abs(SPLITS[:, None] - SPLITS[None, :])
    cost = emit[0].copy()
    back = np.zeros(emit.shape, dtype=np.int64)
    for s in range(1, len(onsets)):
        cand = cost[:, None] + move
        back[s] = np.argmin(cand, axis=0)
        cost = cand[back[s], np.arange(SPLITS.size)] + emit[s]
    path = np.empty(len(onsets), dtype=np.int64)
    path[-1] = int(np.argmin(cost))
    for s in range(len(onsets) - 1, 0, -1):
        path[s - 1] = back[s, path[s]]
    split_at = SPLITS[path]
    staves = [0 if q.pitch >= split_at[by_tick[q.on]] else 1 for q in notes]
    left = sum(staves)
    if min(left, len(staves) - left) < ONE_STAFF_SHARE * len(staves):
        lower = left > len(staves) - left
        return [1 if lower else 0] * len(staves)
    return staves


def is_line(notes: Sequence[QNote]) -> bool:
    """True when the notes are in effect one melodic line (one staff, one voice).

    Judged by onsets, not by overlaps: a flute or a fiddle transcribed from a recording
    lets each note ring into the next, so its notes overlap all the time, but a line
    rarely strikes two notes at once and no note of it holds on under two later onsets
    (a quiet note's onset does not count: it may be a ghost, :func:`line_ghosts`).
    Chords and accompaniments do both. On the dev set the lines score at most 0.11 of
    notes struck together and 0.0 held, the keyboard and chorale pieces 0.57 and more
    struck together.
    """
    if not notes:
        return False
    per_onset = Counter(q.on for q in notes)
    median_velocity = float(np.median([q.velocity for q in notes]))
    onsets = sorted({q.on for q in notes if q.velocity >= GHOST_VELOCITY * median_velocity})  # not a ghost's
    struck_together = sum(1 for q in notes if per_onset[q.on] > 1)
    held = sum(1 for q in notes if bisect.bisect_left(onsets, q.off) - bisect.bisect_right(onsets, q.on) >= 2)
    return struck_together <= LINE_STRUCK_TOGETHER * len(notes) and held <= LINE_HELD * len(notes)


def line_ghosts(notes: Sequence[QNote]) -> list[QNote]:
    """The stray notes of a melodic line: [] for any part that is not one (:func:`is_line`).

    A line transcribed from a room comes out with a few quiet notes far from its register
    (subharmonics, bleed, a resonance), struck with its own notes or between them. They
    are not music: kept, they open a second staff or a second voice full of rests under
    the melody, or hang ledger lines under it. A ghost lies more than
    :data:`GHOST_DISTANCE` semitones outside the range (5th to 95th percentile) of the
    line's other notes and is quiet: struck with a louder note, or under
    :data:`GHOST_VELOCITY` of the line's median velocity. A double stop inside the line's
    range stays, and so does a loud low note (a real leap).
    """
    if len(notes) < 8 or not is_line(notes):
        return []
    by_onset: dict[int, list[QNote]] = defaultdict(list)
    for q in notes:
        by_onset[q.on].append(q)
    median_velocity = float(np.median([q.velocity for q in notes]))
    quiet = {
        id(q)
        for group in by_onset.values()
        for q in group
        if q.velocity < max(g.velocity for g in group) or q.velocity < GHOST_VELOCITY * median_velocity
    }
    if not quiet:
        return []
    pitches = np.array([q.pitch for q in notes if id(q) not in quiet] or [q.pitch for q in notes])
    low, high = np.percentile(pitches, 5) - GHOST_DISTANCE, np.percentile(pitches, 95) + GHOST_DISTANCE
    return [q for q in notes if id(q) in quiet and not low <= q.pitch <= high]


# --------------------------------------------------------------------------- voices


class _Slot:
    """One voice's current chord while notes are dealt out."""

    def __init__(self) -> None:
        self.notes: list[QNote] = []

    @property
    def off(self) -> int:
        return max((q.off for q in self.notes), default=-1)

    @property
    def top(self) -> int:
        return max(q.pitch for q in self.notes)

    def busy_at(self, tick: int) -> bool:
        return self.off > tick


def legato(notes: Sequence[QNote], beat: int, line: bool = False) -> None:
    """Durations from the next onset of the staff, unless a note is clearly held past it.

    The transcriber's offsets are the weakest thing it gives (a piano note decays long
    before the key is released): a note that ends near or before the next onset of its
    staff is held to that onset when the gap is under a beat, so notes struck together
    end together and read as one chord. A note still sounding well past the next onset
    (half a beat at least) is held: it will get a voice of its own, unless the staff is
    a melodic ``line`` (:func:`is_line`), where what sounds on is the room ringing and
    every note ends where the next begins.
    """
    onsets = sorted({q.on for q in notes})
    for q in notes:
        i = bisect.bisect_right(onsets, q.on)
        if i == len(onsets):
            continue
        nxt = onsets[i]
        if (q.off - nxt < max(EIGHTH, beat // 2) and nxt - q.off < beat) or (line and q.off > nxt):
            q.off = nxt
    # notes struck together whose ends still differ by less than an eighth end together
    by_onset: dict[int, list[QNote]] = defaultdict(list)
    for q in notes:
        by_onset[q.on].append(q)
    for group in by_onset.values():
        ends = sorted(q.off for q in group)
        for q in group:
            close = [e for e in ends if abs(e - q.off) < EIGHTH]
            q.off = max(close)


def assign_voices(notes: Sequence[QNote]) -> None:
    """Set ``voice`` (1 upper, 2 lower) on the notes of one staff; may shorten a note that
    would otherwise overlap the next chord of its voice."""
    by_onset: dict[int, list[QNote]] = defaultdict(list)
    for q in notes:
        by_onset[q.on].append(q)
    upper, lower = _Slot(), _Slot()
    for t in sorted(by_onset):
        groups: dict[int, list[QNote]] = defaultdict(list)
        for q in by_onset[t]:
            groups[q.off].append(q)
        # highest group first
        ordered = sorted(groups.values(), key=lambda g: -max(q.pitch for q in g))
        for group in ordered:
            _place(group, t, upper, lower)


def _place(group: list[QNote], t: int, upper: _Slot, lower: _Slot) -> None:
    top = max(q.pitch for q in group)
    up_busy, low_busy = upper.busy_at(t), lower.busy_at(t)
    if up_busy and upper.notes and upper.notes[0].on == t:
        # another group already started here in voice 1: this one (lower) goes below
        target = lower
        if low_busy and lower.notes[0].on != t:
            _truncate(lower, t)
    elif not up_busy and not low_busy:
        target = upper
    elif not up_busy:  # the lower voice holds a note
        target = upper if top >= lower.top else lower
        if target is lower:
            _truncate(lower, t)
    elif not low_busy:  # the upper voice holds a note
        if top > upper.top and upper.notes[0].on < t:
            # the held chord is really the lower line: move it down
            for q in upper.notes:
                q.voice = 2
            lower.notes, upper.notes = upper.notes, []
            target = upper
        else:
            target = lower
    else:  # both busy: the voice that frees first gives way
        target = upper if upper.off <= lower.off else lower
        _truncate(target, t)
    if target is upper:
        if not upper.busy_at(t) or upper.notes[0].on != t:
            upper.notes = []
        upper.notes.extend(group)
        for q in group:
            q.voice = 1
    else:
        if not lower.busy_at(t) or lower.notes[0].on != t:
            lower.notes = []
        lower.notes.extend(group)
        for q in group:
            q.voice = 2


def _truncate(slot: _Slot, t: int) -> None:
    for q in slot.notes:
        if q.off > t:
            q.off = max(t, q.on + 1)
    slot.notes = [q for q in slot.notes if q.off > q.on]


def balance_measures(notes: Sequence[QNote], grid: ScoreGrid) -> None:
    """In measures that use two voices, split voice-1 chords that sound alone: the top note
    stays in voice 1, the rest go down to voice 2. Measures with one voice keep voice 1."""
    by_measure: dict[int, list[QNote]] = defaultdict(list)
    for q in notes:
        by_measure[grid.measure_of(q.on)].append(q)
    lower = [q for q in notes if q.voice == 2]
    for qs in by_measure.values():
        if not any(q.voice == 2 for q in qs):
            continue
        chords: dict[tuple[int, int], list[QNote]] = defaultdict(list)
        for q in qs:
            if q.voice == 1:
                chords[(q.on, q.off)].append(q)
        for (on, off), chord in chords.items():
            if len(chord) < 2:
                continue
            if any(v.on < off and v.off > on for v in lower):
                continue
            chord.sort(key=lambda q: q.pitch)
            for q in chord[:-1]:
                q.voice = 2


def absorb_short_rests(notes: Sequence[QNote], grid: ScoreGrid) -> None:
    """Rests are written only where they start a beat.

    A gap shorter than a beat before the next chord of the same voice is articulation (or a
    decay the transcriber cut short): the earlier notes are held to the next chord. A longer
    gap is a rest, but it starts at the next beat: the note before it is held to the end of
    its beat (a sixteenth and two rests in a beat is nobody's idea of a quarter).
    """
    by_voice: dict[tuple[int, int], list[QNote]] = defaultdict(list)
    for q in notes:
        by_voice[(q.staff, q.voice)].append(q)
    for qs in by_voice.values():
        onsets = sorted({q.on for q in qs})
        nxt = dict(itertools.pairwise(onsets))
        for q in qs:
            following = nxt.get(q.on)
            if following is not None and 0 < following - q.off < grid.beat_ticks:
                q.off = following
                continue
            beat_end = grid.beat_start(q.off - 1) + grid.beat_ticks
            limit = beat_end if following is None else min(beat_end, following)
            q.off = max(q.off, limit)


def keep_voices_sequential(notes: Sequence[QNote]) -> None:
    """End every note by the next onset of its voice: a voice is one line of chords.

    The voice assignment can leave a long note sounding under a later chord of its own voice
    (three lines in two voices); written as it is, the note would vanish at that chord and
    reappear, tied, in the next bar. Notes struck together may still end apart (the engraver
    ties the longer ones on).
    """
    by_voice: dict[tuple[int, int], list[QNote]] = defaultdict(list)
    for q in notes:
        by_voice[(q.staff, q.voice)].append(q)
    for qs in by_voice.values():
        nxt = dict(itertools.pairwise(sorted({q.on for q in qs})))
        for q in qs:
            following = nxt.get(q.on)
            if following is not None and q.off > following:
                q.off = following
