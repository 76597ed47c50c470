"""Notes to sheet music a musician can read.

Basic Pitch hands over notes in seconds, with jitter, fragments and overlaps; a
score needs a meter, barlines, note values, hands, voices, spelling and a key.
:func:`notate` makes one in named steps, each in its own module:

==============  =============================================================
:mod:`.clean`   untrusted model output -> valid, de-fragmented notes
:mod:`.beats`   the recording's beats: a tempo map, not one global tempo
:mod:`.meter`   time signature and bar phase (pickup), by a fitted model
:mod:`.rhythm`  onsets and offsets -> the simplest note values on that grid
:mod:`.voices`  hands for keyboard parts, up to two voices per staff
:mod:`.spell`   key signature, mode, pitch spelling (ps13)
:mod:`.engrave` measures, ties, beams, tuplets, accidentals, clefs
:mod:`.export`  MusicXML, MIDI, page SVGs and a PDF
==============  =============================================================

Conventions: keys are ``"<Tonic> <mode>"`` (``"Eb major"``); tempi are quarter notes
per minute whatever the meter; every part is written at sounding pitch. Score tick 0
(the start of the first measure, the pickup's start when there is one) falls at
``NotationResult.time_offset_s`` in the recording. This package imports no Ray and
no torch; librosa, partitura and verovio load lazily.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from music21 import freezeThaw, key, metadata, pitch, stream

from rescored_ray.config import NotationConfig
from rescored_ray.errors import NonRetryableError, log_unexpected, unexpected
from rescored_ray.notation import beats as beats_mod
from rescored_ray.notation.clean import clean_notes, coerce_note, group_by_stem, iter_items
from rescored_ray.notation.engrave import PartPlan, add_credits, add_grand_staff, build_part, tempo_mark
from rescored_ray.notation.export import render_pages, render_svg, write_midi, write_musicxml, write_pdf
from rescored_ray.notation.meter import METERS, UNITS_PER_EIGHTH, Meter, TatumNotes, choose_meter
from rescored_ray.notation.parts import plan_parts
from rescored_ray.notation.rhythm import EIGHTH, TPQ, QNote, ScoreGrid, quantise, tempo_marks
from rescored_ray.notation.spell import estimate_key_from, key_signature_for, key_str, parse_key, spell
from rescored_ray.types import Note

__all__ = [
    "NotationResult",
    "clean_notes",
    "estimate_key",
    "estimate_tempo",
    "notate",
    "parse_key",
    "render_pages",
    "render_svg",
    "write_midi",
    "write_musicxml",
    "write_pdf",
]

STAGE = "notation"
DEFAULT_BPM = 120.0
MIN_BPM, MAX_BPM = 30.0, 300.0
"""Clamp for a tempo override."""
MAX_SCORE_SECONDS = 3600.0
"""Notes past one hour are dropped: a stray timestamp must not make a million-bar
score (the longest accepted recording is 15 minutes)."""
CREDIT = "rescored-ray"
UNSURE_METER = 0.5
"""Below this probability of the chosen meter, the result carries a warning."""
CUT_TIME_BPM = 160.0
"""Above this many quarter notes a minute, 4/4 is written 2/2: two half-note beats a bar."""


@dataclass
class NotationResult:
    """A finished score plus what was decided on the way (for the job report)."""

    score: stream.Score
    key: str
    """``"<Tonic> <mode>"``, e.g. ``"A minor"``, ``"Eb major"``."""
    tempo_bpm: float
    """The opening tempo in quarter notes per minute (what the first metronome mark plays)."""
    time_signature: str
    n_notes: int
    """Notes kept after cleaning, all stems together."""
    n_notes_by_stem: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    time_offset_s: float = 0.0
    """Audio time of the score's tick 0 (the first measure's start, pickup included)."""
    pickup_ql: float = 0.0
    """Length of the anacrusis in quarter notes (0 = the piece starts on a downbeat)."""
    meter_confidence: float = 1.0
    """The meter model's probability of ``time_signature`` (1 when it was given)."""
    tempo_changes: list[tuple[int, float]] = field(default_factory=list)
    """(measure number, quarter-note BPM) of every written tempo mark, the first included."""
    notes: dict[str, list[Note]] = field(default_factory=dict, repr=False)
    """The cleaned notes behind the score, per stem, in audio seconds."""

    # Plain pickling of a music21 stream keeps offset tables keyed by id(), which
    # go stale in the receiving process (Ray object store, multiprocessing); the
    # unpickled score then fails to export, intermittently. music21's own
    # freeze/thaw rebuilds them.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["score"] = freezeThaw.StreamFreezer(self.score).writeStr(fmt="pickle")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        thawer = freezeThaw.StreamThawer()
        thawer.openStr(state["score"])
        self.__dict__.update(state, score=thawer.stream)


# --------------------------------------------------------------------------- public helpers


def estimate_key(notes: Sequence[Note]) -> str:
    """Krumhansl-Schmuckler key of (note-like) ``notes``; ``"C major"`` when there is nothing to go on."""
    valid = [n for n in (coerce_note(x) for x in iter_items(notes)) if n is not None]
    if not valid:
        return "C major"
    return estimate_key_from([n.start_s for n in valid], [n.duration_s for n in valid], [n.pitch for n in valid])


def estimate_tempo(notes: Sequence[Note], audio: np.ndarray | None = None, sample_rate: int | None = None) -> float:
    """Quarter-note tempo of the tracked beats (median), or 120 when no pulse is found. Never raises."""
    valid = [n for n in (coerce_note(x) for x in iter_items(notes)) if n is not None]
    try:
        tracked = beats_mod.track_beats(valid, audio, sample_rate)
    except Exception:
        tracked = None
    if tracked is None:
        return DEFAULT_BPM
    grid = beats_mod.eighth_grid(tracked, np.array([n.start_s for n in valid]))
    return float(60.0 / (2.0 * np.median(grid.periods())))


# --------------------------------------------------------------------------- notate


def notate(
    notes: Mapping[str, Sequence[Note]] | Sequence[Note],
    cfg: NotationConfig,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    *,
    title: str | None = None,
    artist: str | None = None,
) -> NotationResult:
    """Turn transcribed notes (per stem, or one list grouped by ``Note.stem``) into a score.

    ``audio`` (the mix, (channels, frames)) sharpens the beats; ``title`` and ``artist``
    come from the source (``cfg.title`` wins). Never fails on note content (silence
    gives an empty score and a warning); invalid ``key_override``/``time_signature``
    raise :class:`NonRetryableError` with stage ``notation``; any other failure follows
    the one rule for unexpected errors (:func:`rescored_ray.errors.unexpected`).
    """
    try:
        return _notate(notes, cfg, audio, sample_rate, title, artist)
    except NonRetryableError:
        raise
    except Exception as exc:
        log_unexpected(exc, STAGE)
        raise unexpected(exc, STAGE) from exc


def _notate(
    notes: Mapping[str, Sequence[Note]] | Sequence[Note],
    cfg: NotationConfig,
    audio: np.ndarray | None,
    sample_rate: int | None,
    title: str | None,
    artist: str | None,
) -> NotationResult:
    warnings: list[str] = []
    fixed_meter = parse_time_signature(cfg.time_signature)
    key_override = parse_key(cfg.key_override) if cfg.key_override else None
    cleaned = _clean(notes, cfg, warnings)
    everything = [n for ns in cleaned.values() for n in ns]
    grid = score_grid(everything, cfg, fixed_meter, audio, sample_rate, warnings)
    placed = {stem: quantise(ns, grid) for stem, ns in cleaned.items()}
    plans = plan_parts(placed, grid)
    all_q = [q for qs in placed.values() for q in qs]
    key_sig, spelling = _key_and_spelling(all_q, key_override)
    n_measures = max(1, grid.measure_of(max((q.off for q in all_q), default=1) - 1) + 1)
    # the last measure's beats ring out into silence: its tempo is the one before it
    marks = tempo_marks(grid, max(1, grid.measure_of(max((q.on for q in all_q), default=0))))
    score = _engrave(plans, grid, n_measures, key_sig, spelling, marks, cfg.title or title, artist)
    counts = {stem: len(ns) for stem, ns in cleaned.items()}
    first_number = 0 if grid.pickup else 1
    return NotationResult(
        score=score,
        key=key_str(key_sig),
        tempo_bpm=round(marks[0][1], 3),
        time_signature=grid.meter.ratio,
        n_notes=sum(counts.values()),
        n_notes_by_stem=counts,
        warnings=warnings,
        time_offset_s=round(grid.origin_s, 6),
        pickup_ql=float(grid.pickup) / TPQ,
        meter_confidence=grid.meter_confidence,
        tempo_changes=[(i + first_number, round(bpm, 3)) for i, bpm in marks],
        notes=cleaned,
    )


def parse_time_signature(text: str | None) -> Meter | None:
    """``None`` for ``auto``; a :class:`Meter` for a supported signature; a clear error otherwise."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return None
    meter = Meter.parse(str(text))
    if meter is None:
        raise NonRetryableError(
            f"unsupported time_signature {text!r}: use 'auto' or n/4, n/2, n/8 (e.g. 3/4, 6/8, 2/2)", stage=STAGE
        )
    return meter


def _clean(
    notes: Mapping[str, Sequence[Note]] | Sequence[Note], cfg: NotationConfig, warnings: list[str]
) -> dict[str, list[Note]]:
    """Valid notes per stem, inside the one-hour horizon."""
    cleaned: dict[str, list[Note]] = {}
    for stem, items in group_by_stem(notes).items():
        kept = clean_notes(items, cfg)
        late = [n for n in kept if n.start_s >= MAX_SCORE_SECONDS]
        if late:
            warnings.append(f"{stem}: dropped {len(late)} notes starting after {MAX_SCORE_SECONDS:g} s")
        cleaned[stem] = [
            n if n.end_s <= MAX_SCORE_SECONDS else replace(n, end_s=MAX_SCORE_SECONDS)
            for n in kept
            if n.start_s < MAX_SCORE_SECONDS
        ]
    if not cleaned:
        cleaned["mix"] = []
    if not any(cleaned.values()):
        warnings.append("no notes to notate (silence, or everything was filtered out); the score is empty")
    else:
        warnings.extend(f"{stem}: no notes after cleaning" for stem, ns in cleaned.items() if not ns)
    return cleaned


@dataclass(frozen=True)
class MeterEvidence:
    """What the meter is chosen from: the eighth-note grid and the notes on it."""

    eighths: beats_mod.TempoMap
    notes: TatumNotes | None
    candidates: tuple[Meter, ...]
    tracked: bool
    """Whether the grid comes from tracked beats (not an override or the default tempo)."""


def meter_evidence(
    notes: Sequence[Note],
    cfg: NotationConfig,
    fixed_meter: Meter | None,
    audio: np.ndarray | None,
    sample_rate: int | None,
    warnings: list[str],
) -> MeterEvidence:
    """The eighth-note grid of the recording and the notes on it (``bench/train_meter.py`` fits
    the meter model on exactly this, from renders)."""
    onsets = np.array([n.start_s for n in notes], dtype=np.float64)
    tracked = None
    if cfg.tempo_override is not None:
        bpm = float(min(MAX_BPM, max(MIN_BPM, cfg.tempo_override)))
        if bpm != cfg.tempo_override:
            warnings.append(f"tempo_override {cfg.tempo_override:g} clamped to {bpm:g} BPM")
        eighths = _constant_eighths(onsets, 30.0 / bpm)
    else:
        if notes:
            tracked = beats_mod.track_beats(notes, audio, sample_rate)
            if tracked is None:
                warnings.append(f"tempo: no steady beat found; writing at {DEFAULT_BPM:g} BPM")
        eighths = (
            beats_mod.eighth_grid(tracked, onsets)
            if tracked is not None
            else _constant_eighths(onsets, 30.0 / DEFAULT_BPM)
        )
    candidates: tuple[Meter, ...] = METERS
    if fixed_meter is not None:
        candidates = (fixed_meter,)
    elif tracked is not None and beats_mod.subdivision(tracked, onsets) == 3:
        candidates = tuple(m for m in METERS if m.compound)  # beats heard in thirds
    grid_notes = None
    if notes:
        ends = np.array([n.end_s for n in notes], dtype=np.float64)
        grid_notes = TatumNotes.from_arrays(
            eighths.position(onsets) * UNITS_PER_EIGHTH,
            eighths.position(ends) * UNITS_PER_EIGHTH,
            [n.pitch for n in notes],
        )
    return MeterEvidence(eighths, grid_notes, candidates, tracked is not None)


def score_grid(
    notes: Sequence[Note],
    cfg: NotationConfig,
    fixed_meter: Meter | None,
    audio: np.ndarray | None,
    sample_rate: int | None,
    warnings: list[str],
) -> ScoreGrid:
    """Beats, meter, bar phase and pickup: where every tick of the score falls in the recording."""
    evidence = meter_evidence(notes, cfg, fixed_meter, audio, sample_rate, warnings)
    eighths = evidence.eighths
    finest = max(1, TPQ // int(cfg.divisions_per_quarter))
    if evidence.notes is None:
        return ScoreGrid(eighths, fixed_meter or Meter(2, 4), origin=0, pickup=0, finest=finest)
    choice = choose_meter(evidence.notes, evidence.candidates)
    meter = choice.meter
    if fixed_meter is None and meter == Meter(2, 4) and 30.0 / float(np.median(eighths.periods())) > CUT_TIME_BPM:
        meter = Meter(4, 2)  # fast common time is read in two: alla breve
    units = UNITS_PER_EIGHTH
    first = int(evidence.notes.onset.min())
    if choice.confidence < UNSURE_METER:
        warnings.append(
            f"meter: {meter.ratio} is only {choice.confidence:.0%} likely; set notation.time_signature if it is wrong"
        )
    return ScoreGrid(
        eighths,
        meter,
        origin=first / units,
        pickup=choice.pickup_units * EIGHTH // units,
        finest=finest,
        meter_confidence=round(choice.confidence, 3),
    )


def _constant_eighths(onsets: np.ndarray, period: float) -> beats_mod.TempoMap:
    """A steady eighth-note grid whose phase puts the onsets nearest to its lines."""
    if onsets.size == 0:
        return beats_mod.TempoMap.constant(period, 0.0, period * 2)
    phases = np.arange(32) * (period / 32)
    dev = (onsets[None, :] - phases[:, None]) / period
    phase = float(phases[int(np.argmin(np.abs(dev - np.round(dev)).sum(axis=1)))])
    first = phase + np.floor((onsets.min() - phase) / period) * period
    return beats_mod.TempoMap.constant(period, first - period, float(onsets.max()) + 8 * period)


def _key_and_spelling(qnotes: list[QNote], key_override: key.Key | None) -> tuple[key.Key, dict[int, pitch.Pitch]]:
    """The key signature, and each note's spelled pitch (by ``id`` of the note)."""
    if key_override is not None:
        key_sig = key_override
    elif qnotes:
        key_sig = parse_key(
            estimate_key_from([q.on for q in qnotes], [q.length for q in qnotes], [q.pitch for q in qnotes])
        )
    else:
        key_sig = parse_key("C major")
    pitches = spell([q.on for q in qnotes], [q.length for q in qnotes], [q.pitch for q in qnotes], key_sig)
    if key_override is None:
        key_sig = key_signature_for(key_sig, pitches)
    return key_sig, {id(q): p for q, p in zip(qnotes, pitches, strict=True)}


def _engrave(
    plans: list[PartPlan],
    grid: ScoreGrid,
    n_measures: int,
    key_sig: key.Key,
    spelling: dict[int, pitch.Pitch],
    marks: list[tuple[int, float]],
    title: str | None,
    artist: str | None,
) -> stream.Score:
    score = stream.Score()
    score.metadata = metadata.Metadata()
    score.metadata.title = title or "Transcription"
    if artist:
        score.metadata.composer = artist
    score.metadata.addContributor(metadata.Contributor(role="transcriber", name=CREDIT))
    add_credits(score, score.metadata.title, artist, f"Transcribed by {CREDIT}")
    parts: list[stream.Part] = []
    for plan in plans:
        staves = build_part(plan, grid, n_measures, spelling, key_sig)
        if len(staves) > 1:
            add_grand_staff(score, staves, plan.name)
        parts.extend(staves)
    for p in parts:
        score.coreInsert(0, p)
    top = list(parts[0].getElementsByClass(stream.Measure))
    for index, bpm in marks:
        m = top[index]
        m.coreInsert(0, tempo_mark(bpm, grid.meter))
        m.coreElementsChanged()
    score.coreElementsChanged()
    return score
