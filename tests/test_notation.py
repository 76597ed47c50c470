"""Tests for rescored_ray.notation: real music21, real files, no mocks."""

from __future__ import annotations

import pickle
from pathlib import Path

import mido
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from music21 import chord, clef, converter, instrument, key, layout, note, stream, tempo

from rescored_ray import notation as nt
from rescored_ray.config import NotationConfig
from rescored_ray.errors import NonRetryableError
from rescored_ray.types import Note


def parse_xml(path: Path) -> stream.Score:
    # No pickle cache: every test must read what was actually written.
    return converter.parse(str(path), format="musicxml", forceSource=True, storePickle=False)


def sounding_notes(score: stream.Score, bpm: float, offset_s: float = 0.0) -> list[tuple[float, int, float]]:
    """(onset_s, midi, duration_s) for every note of a score, tied pieces summed;
    ``offset_s`` is the audio time of the score's start (``NotationResult.time_offset_s``)."""
    out: list[tuple[float, int, float]] = []
    for part in score.parts:
        held: dict[int, list[float]] = {}
        elements = [
            (float(m.offset + el.offset), el)
            for m in part.getElementsByClass(stream.Measure)
            for el in m.recurse().notes  # includes notes inside voices, if any
        ]
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
                    out.append((on * 60.0 / bpm + offset_s, midi, dur * 60.0 / bpm))
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


# --------------------------------------------------------------------------- cleaning


def test_clean_notes_filters_merges_and_sorts():
    cfg = NotationConfig(min_note_ms=60, merge_gap_ms=40, lowest_pitch=21, highest_pitch=108)
    notes = [
        Note(1.0, 1.5, 64, stem="other"),
        Note(0.0, 0.5, 60, stem="other", amplitude=0.6),
        Note(0.52, 0.9, 60, stem="other", amplitude=0.3),  # 20 ms gap, weaker: a fragment, merged
        Note(0.0, 0.5, 60, stem="bass"),  # same pitch, other stem: kept separately
        Note(2.0, 2.03, 67),  # 30 ms: too short
        Note(3.0, 4.0, 10),  # below lowest_pitch
        Note(3.0, 4.0, 120),  # above highest_pitch
        Note(float("nan"), 1.0, 60),
        Note(0.0, float("inf"), 60),
        Note(-1.0, 1.0, 60),
        Note(2.0, 1.0, 60),  # ends before it starts
        Note(5.0, 5.0, 60),  # zero length
        None,
        "not a note",
        {"start_s": 6.0, "end_s": 6.5, "pitch": 61.2, "velocity": 400, "stem": "vocals"},
        object(),
    ]
    cleaned = nt.clean_notes(notes, cfg)
    assert [(n.start_s, n.end_s, n.pitch, n.stem) for n in cleaned] == [
        (0.0, 0.5, 60, "bass"),
        (0.0, 0.9, 60, "other"),
        (1.0, 1.5, 64, "other"),
        (6.0, 6.5, 61, "vocals"),
    ]
    assert cleaned[-1].velocity == 127


def test_clean_notes_merges_chains_of_fragments_before_length_filter():
    cfg = NotationConfig(min_note_ms=100, merge_gap_ms=40)
    # Five 50 ms fragments 10 ms apart: each alone is too short, together 290 ms.
    fragments = [Note(i * 0.06, i * 0.06 + 0.05, 70, amplitude=0.9 if i == 0 else 0.5) for i in range(5)]
    cleaned = nt.clean_notes(list(reversed(fragments)), cfg)
    assert len(cleaned) == 1
    assert cleaned[0].start_s == 0.0 and cleaned[0].end_s == pytest.approx(0.29)


def test_repeated_notes_are_not_merged_into_one():
    """Basic Pitch starts notes only at onsets: touching or equally strong notes are re-struck."""
    cfg = NotationConfig(min_note_ms=0, merge_gap_ms=40)
    touching = [Note(0.0, 0.5, 60, amplitude=0.6), Note(0.5, 1.0, 60, amplitude=0.3)]
    restruck = [Note(2.0, 2.5, 62, amplitude=0.6), Note(2.52, 3.0, 62, amplitude=0.6)]
    assert len(nt.clean_notes(touching + restruck, cfg)) == 4


@pytest.mark.parametrize("garbage", [None, 42, "abc", [None, 1, "x"], [float("nan"), {"pitch": "x"}]])
def test_clean_notes_never_raises(garbage):
    assert nt.clean_notes(garbage, NotationConfig()) == []


# --------------------------------------------------------------------------- key / tempo


def test_estimate_key_c_major():
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    notes = [Note(i * 0.5, i * 0.5 + 0.5, p) for i, p in enumerate(scale)]
    for i, triad in enumerate([(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)]):
        notes += [Note(4.0 + i, 5.0 + i, p) for p in triad]
    assert nt.estimate_key(notes) == "C major"


def test_estimate_key_a_harmonic_minor():
    scale = [57, 59, 60, 62, 64, 65, 68, 69]
    notes = [Note(i * 0.5, i * 0.5 + 0.5, p) for i, p in enumerate(scale)]
    for i, triad in enumerate([(57, 60, 64), (62, 65, 69), (64, 68, 71), (57, 60, 64)]):
        notes += [Note(4.0 + i, 5.0 + i, p) for p in triad]
    assert nt.estimate_key(notes) == "A minor"


def test_estimate_key_is_transposition_aware_and_defaults():
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    notes = [Note(i * 0.5, i * 0.5 + 0.5, p + 3) for i, p in enumerate(scale)]  # Eb major scale
    notes += [Note(5.0, 7.0, 63), Note(5.0, 7.0, 67), Note(5.0, 7.0, 70)]
    assert nt.estimate_key(notes) == "Eb major"
    assert nt.estimate_key([]) == "C major"


def _within(value: float, target: float, tol: float = 0.03) -> bool:
    return abs(value / target - 1.0) <= tol


def test_estimate_tempo_from_notes_100_bpm():
    rng = np.random.default_rng(1)
    notes = []
    for i in range(48):  # quarter-note pulse with small timing jitter and some off-beat eighths
        t = max(0.0, i * 0.6 + rng.normal(0, 0.008))
        notes.append(Note(t, t + 0.3, 60 + int(rng.integers(0, 12)), 90))
        if i % 3 == 0:
            notes.append(Note(t + 0.3, t + 0.5, 67, 60))
    bpm = nt.estimate_tempo(notes)
    assert _within(bpm, 100.0), bpm


def _click_track(bpm: float, seconds: float = 20.0, sr: int = 44100) -> np.ndarray:
    y = np.zeros(int(sr * seconds), dtype=np.float32)
    n = int(0.03 * sr)
    t = np.arange(n) / sr
    click = (np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.005)).astype(np.float32)
    period = 60.0 / bpm
    for i in range(int(seconds / period)):
        start = int(i * period * sr)
        seg = y[start : start + n]
        seg += click[: seg.size]
    return np.stack([y, y])  # (channels, frames)


def test_estimate_tempo_from_click_track_audio_120_bpm():
    bpm = nt.estimate_tempo([], _click_track(120.0), 44100)
    folded = min((bpm * f for f in (0.5, 1.0, 2.0)), key=lambda b: abs(b - 120.0))
    assert _within(folded, 120.0), bpm
    assert nt.FOLD_LOW_BPM <= bpm <= nt.FOLD_HIGH_BPM


def test_estimate_tempo_folds_and_falls_back():
    slow = [Note(i * 60 / 45, i * 60 / 45 + 0.2, 60) for i in range(24)]  # 45 BPM pulse
    assert _within(nt.estimate_tempo(slow), 90.0)  # folded up an octave into 60-180
    fast = [Note(i * 0.2, i * 0.2 + 0.1, 60) for i in range(60)]  # 300 BPM pulse
    assert nt.FOLD_LOW_BPM <= nt.estimate_tempo(fast) <= nt.FOLD_HIGH_BPM
    assert nt.estimate_tempo([]) == nt.DEFAULT_BPM
    silence = np.zeros((2, 44100 * 4), dtype=np.float32)
    assert nt.estimate_tempo([], silence, 44100) == nt.DEFAULT_BPM


def test_notate_uses_audio_tempo_and_override_wins():
    notes = [Note(i * 0.6, i * 0.6 + 0.3, 60) for i in range(30)]  # 100 BPM in the notes
    audio = _click_track(120.0)
    from_audio = nt.notate(notes, NotationConfig(), audio=audio, sample_rate=44100)
    assert _within(from_audio.tempo_bpm, 120.0)
    overridden = nt.notate(notes, NotationConfig(tempo_override=90), audio=audio, sample_rate=44100)
    assert overridden.tempo_bpm == 90.0
    mark = overridden.score.recurse().getElementsByClass(tempo.MetronomeMark).first()
    assert mark is not None and mark.number == 90


@pytest.mark.parametrize(
    "text, expected, sharps",
    [("Gm", "G minor", -2), ("G minor", "G minor", -2), ("F#", "F# major", 6), ("Bb major", "Bb major", -2)],
)
def test_key_override(text, expected, sharps):
    result = nt.notate([Note(0, 1, 60)], NotationConfig(key_override=text, tempo_override=120))
    assert result.key == expected
    ks = result.score.parts[0].recurse().getElementsByClass(key.KeySignature).first()
    assert ks.sharps == sharps


@pytest.mark.parametrize("bad", ["H major", "C lydian", "xyz", "G##m#"])
def test_garbage_key_override_is_non_retryable(bad):
    with pytest.raises(NonRetryableError) as info:
        nt.notate([Note(0, 1, 60)], NotationConfig(key_override=bad))
    assert info.value.stage == "notation"
    assert info.value.retryable is False


def test_garbage_time_signature_is_non_retryable():
    with pytest.raises(NonRetryableError) as info:
        nt.notate([Note(0, 1, 60)], NotationConfig(time_signature="banana"))
    assert info.value.stage == "notation"


# --------------------------------------------------------------------------- score building


def test_round_trip_onsets_pitches_durations(tmp_path):
    bpm = 120.0  # one quarter = 0.5 s; sixteenth grid = 0.125 s
    notes = {
        "vocals": [Note(0.0, 0.5, 67), Note(0.5, 0.75, 69), Note(0.75, 3.25, 71)],  # last crosses a bar
        "other": [
            Note(0.0, 2.0, 72), Note(0.25, 0.75, 76), Note(0.5, 1.0, 79),  # overlapping, RH
            Note(0.0, 4.0, 48), Note(1.0, 1.5, 55),  # LH
            Note(2.125, 2.375, 61),  # off-beat sixteenth, black key
        ],
        "bass": [Note(0.0, 1.0, 36), Note(1.0, 1.375, 43), Note(2.0, 6.0, 31)],
    }
    result = nt.notate(notes, NotationConfig(tempo_override=bpm))
    assert result.n_notes == 12
    assert result.n_notes_by_stem == {"vocals": 3, "other": 6, "bass": 3}
    path = nt.write_musicxml(result.score, tmp_path / "score.musicxml")
    got = sounding_notes(parse_xml(path), bpm)
    expected = sorted((n.start_s, n.pitch, n.end_s - n.start_s) for ns in notes.values() for n in ns)
    assert [(on, p) for on, p, _ in got] == [(on, p) for on, p, _ in expected]
    assert [d for _, _, d in got] == pytest.approx([d for _, _, d in expected])


def test_quantisation_merges_and_never_makes_empty_notes():
    cfg = NotationConfig(tempo_override=120, min_note_ms=0, merge_gap_ms=0)
    notes = [
        Note(1.0, 1.01, 60),  # 10 ms: becomes one sixteenth, not zero
        Note(2.0, 2.01, 64, stem="other"),
        Note(2.03, 2.5, 64, stem="other"),  # same onset after quantisation: merged (longest wins)
    ]
    assert len(nt.clean_notes(notes, cfg)) == 3  # cleaning keeps both 64s apart...
    result = nt.notate(notes, cfg)
    got = sounding_notes(result.score, 120.0, result.time_offset_s)
    assert got == [(1.0, 60, 0.125), (2.0, 64, 0.5)]  # ...the grid merges them
    for el in result.score.recurse().notesAndRests:
        assert el.quarterLength > 0
        assert el.duration.type not in ("complex", "inexpressible", "zero")


def test_very_long_note_is_tied_across_bars(tmp_path):
    result = nt.notate([Note(0.0, 200.0, 60, stem="vocals")], NotationConfig(tempo_override=120))
    part = result.score.parts[0]
    measures = part.getElementsByClass(stream.Measure)
    assert len(measures) == 100  # 200 s at 120 BPM = 400 quarters = 100 bars of 4/4
    pieces = list(part.recurse().notes)
    assert len(pieces) == 100
    assert pieces[0].tie.type == "start" and pieces[-1].tie.type == "stop"
    assert all(p.tie.type == "continue" for p in pieces[1:-1])
    assert all(p.duration.type == "whole" for p in pieces)

    path = nt.write_musicxml(result.score, tmp_path / "long.musicxml")
    assert sounding_notes(parse_xml(path), 120.0) == [(0.0, 60, 200.0)]
    midi = nt.write_midi(result.score, tmp_path / "long.mid")
    assert midi_notes(midi) == [(0, 400 * 480, 60)]  # ties become one MIDI note


def test_empty_input_gives_rests_and_warning(tmp_path):
    for empty in ([], {"vocals": [], "bass": []}, [Note(float("nan"), 1.0, 60)]):
        result = nt.notate(empty, NotationConfig())
        assert result.n_notes == 0
        assert any(w.startswith("no notes") for w in result.warnings), result.warnings
        assert not list(result.score.recurse().notes)
        assert list(result.score.recurse().getElementsByClass(note.Rest))
        path = nt.write_musicxml(result.score, tmp_path / "empty.musicxml")
        parsed = parse_xml(path)
        assert len(parsed.parts) >= 1
        assert list(parsed.recurse().getElementsByClass(note.Rest))
    assert [p.partName for p in result.score.parts] == ["Piano", "Piano"]  # 'mix' grand staff
    two = nt.notate({"vocals": [], "bass": []}, NotationConfig())
    assert [p.partName for p in two.score.parts] == ["Voice", "Bass"]


def test_grand_staff_and_clefs(tmp_path):
    notes = [
        Note(0.0, 1.0, 72, stem="other"),
        Note(0.0, 1.0, 60, stem="other"),  # middle C goes to the right hand
        Note(0.0, 1.0, 45, stem="other"),
        Note(0.0, 1.0, 38, stem="bass"),
        Note(0.0, 1.0, 67, stem="vocals"),
        Note(0.0, 1.0, 52, stem="guitar"),
    ]
    result = nt.notate(notes, NotationConfig(tempo_override=120))
    score = result.score

    def check(score):
        groups = list(score.getElementsByClass(layout.StaffGroup))
        assert len(groups) == 1 and groups[0].symbol == "brace"
        staves = groups[0].getSpannedElements()
        assert len(staves) == 2 and all(isinstance(s, stream.PartStaff) for s in staves)
        rh, lh = staves
        assert staff_pitches(rh) == [60, 72]
        assert staff_pitches(lh) == [45]
        assert isinstance(rh.recurse().getElementsByClass(clef.Clef).first(), clef.TrebleClef)
        assert isinstance(lh.recurse().getElementsByClass(clef.Clef).first(), clef.BassClef)
        by_pitch = {}
        for part in score.parts:
            for midi in staff_pitches(part):
                by_pitch[midi] = part.recurse().getElementsByClass(clef.Clef).first()
        assert isinstance(by_pitch[38], clef.BassClef)  # bass: bass clef at sounding pitch
        assert isinstance(by_pitch[67], clef.TrebleClef)  # vocals
        assert isinstance(by_pitch[52], clef.Treble8vbClef)  # guitar

    check(score)
    names = [p.partName for p in score.parts]
    assert names == ["Voice", "Guitar", "Piano (other)", "Piano (other)", "Bass"]
    assert isinstance(score.parts[0].getInstrument(), instrument.Vocalist)
    assert isinstance(score.parts[-1].getInstrument(), instrument.ElectricBass)
    check(parse_xml(nt.write_musicxml(score, tmp_path / "grand.musicxml")))


def test_spelling_accidentals_and_beams(tmp_path):
    q = 0.5  # seconds per quarter at 120 BPM
    notes = [
        # F#, F# (no sign: already raised in this bar), F natural; gaps keep the F#s apart
        Note(0 * q, 0.75 * q, 66), Note(1 * q, 1.75 * q, 66), Note(2 * q, 3 * q, 65),
        Note(4 * q, 5 * q, 66),  # next bar: F# shown again
        *[Note(5 * q + i * q / 4, 5 * q + (i + 1) * q / 4, 60 + 2 * i) for i in range(4)],  # four sixteenths
    ]
    result = nt.notate(notes, NotationConfig(tempo_override=120, key_override="C"))
    parsed = parse_xml(nt.write_musicxml(result.score, tmp_path / "acc.musicxml"))
    written = list(parsed.parts[0].recurse().notes)
    shown = [(n.pitch.name, n.pitch.accidental is not None and n.pitch.accidental.displayStatus is True)
             for n in written[:4]]
    assert shown == [("F#", True), ("F#", False), ("F", True), ("F#", True)]
    assert [n.beams.getTypes() for n in written[4:]] == [["start", "start"], ["continue", "continue"],
                                                         ["continue", "continue"], ["stop", "stop"]]
    # Key-aware spelling: flats in Eb major, the raised leading tone in A minor.
    eb_cfg = NotationConfig(tempo_override=120, key_override="Eb")
    eb = nt.notate([Note(0, 0.5, 63), Note(0.5, 1.0, 70)], eb_cfg)
    assert [n.pitch.name for n in eb.score.recurse().notes] == ["E-", "B-"]
    am = nt.notate([Note(0, 0.5, 68)], NotationConfig(tempo_override=120, key_override="Am"))
    assert [n.pitch.name for n in am.score.recurse().notes] == ["G#"]


def test_title_time_signature_and_tempo_mark(tmp_path):
    cfg = NotationConfig(tempo_override=96, time_signature="3/4", title="My Song")
    result = nt.notate([Note(0, 0.625, 62), Note(0.625, 1.25, 66)], cfg)
    assert result.time_signature == "3/4"
    parsed = parse_xml(nt.write_musicxml(result.score, tmp_path / "t.musicxml"))
    assert parsed.metadata.bestTitle == "My Song"
    ts = parsed.recurse().getElementsByClass("TimeSignature").first()
    assert ts.ratioString == "3/4"
    assert parsed.recurse().getElementsByClass(tempo.MetronomeMark).first().number == 96
    assert parsed.parts[0].getElementsByClass(stream.Measure).first().barDuration.quarterLength == 3.0


def test_notes_past_the_horizon_are_dropped_with_a_warning():
    notes = [Note(0.5, 1.5, 60), Note(nt.MAX_SCORE_SECONDS + 5, nt.MAX_SCORE_SECONDS + 6, 62)]
    result = nt.notate(notes, NotationConfig(tempo_override=120))
    assert result.n_notes == 1
    assert any("after 3600 s" in w for w in result.warnings)
    assert len(result.score.parts[0].getElementsByClass(stream.Measure)) == 1


def test_write_midi_matches_score(tmp_path):
    notes = [Note(0.0, 0.5, 60), Note(0.5, 1.0, 64), Note(0.5, 2.5, 48), Note(1.0, 1.25, 67)]
    result = nt.notate(notes, NotationConfig(tempo_override=120))
    path = nt.write_midi(result.score, tmp_path / "x.mid")
    ticks = [(a / 480 * 0.5, b / 480 * 0.5, p) for a, b, p in midi_notes(path)]
    assert ticks == sorted((n.start_s, n.end_s, n.pitch) for n in notes)
    tempos = [m.tempo for t in mido.MidiFile(str(path)).tracks for m in t if m.type == "set_tempo"]
    assert tempos == [mido.bpm2tempo(120)]


def test_writers_use_exactly_the_given_path(tmp_path):
    # The pipeline writes to temp names like ".score.musicxml.abc.partial" and renames them.
    result = nt.notate([Note(0.0, 1.0, 60)], NotationConfig(tempo_override=120))
    xml = nt.write_musicxml(result.score, tmp_path / ".score.musicxml.abc.partial")
    mid = nt.write_midi(result.score, tmp_path / "sub" / "noext")
    assert xml == tmp_path / ".score.musicxml.abc.partial" and mid == tmp_path / "sub" / "noext"
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == [".score.musicxml.abc.partial", "noext"]
    assert xml.read_text().lstrip().startswith("<?xml") and mid.read_bytes()[:4] == b"MThd"


def test_result_survives_pickling(tmp_path):
    # Ray and multiprocessing pickle results; the thawed score must still export.
    notes = [
        Note(0.0, 1.0, 60, stem="other"), Note(0.0, 1.0, 64, stem="other"), Note(0.5, 2.0, 40, stem="bass"),
    ]
    result = nt.notate(notes, NotationConfig(tempo_override=120))
    for _ in range(3):
        clone = pickle.loads(pickle.dumps(result))
        assert (clone.key, clone.tempo_bpm) == (result.key, 120.0)
        assert clone.n_notes_by_stem == {"other": 2, "bass": 1}
        path = nt.write_musicxml(clone.score, tmp_path / "clone.musicxml")
        assert sounding_notes(parse_xml(path), 120.0) == sounding_notes(result.score, 120.0)
    assert sounding_notes(result.score, 120.0) == [(0.0, 60, 1.0), (0.0, 64, 1.0), (0.5, 40, 1.5)]


def test_render_svg(tmp_path):
    notes = [Note(i * 0.5, i * 0.5 + 0.5, p) for i, p in enumerate([60, 62, 64, 65, 67])]
    result = nt.notate(notes, NotationConfig(tempo_override=120))
    path = nt.write_musicxml(result.score, tmp_path / "svg.musicxml")
    svg = nt.render_svg(path)
    assert "<svg" in svg
    assert svg.count('class="note"') >= 5
    assert "<svg" in nt.render_svg(path.read_text())  # MusicXML text works too
    with pytest.raises(NonRetryableError):
        nt.render_svg(tmp_path / "missing.musicxml")


def test_dense_polyphony_exports_and_is_valid(tmp_path):
    rng = np.random.default_rng(7)
    notes = []
    for _ in range(300):
        start = float(rng.uniform(0, 30))
        notes.append(Note(start, start + float(rng.uniform(0.05, 3.0)), int(rng.integers(30, 90)),
                          int(rng.integers(20, 127)), str(rng.choice(["other", "bass", "vocals"]))))
    result = nt.notate(notes, NotationConfig(divisions_per_quarter=3, time_signature="6/8"))
    for part in result.score.parts:
        for m in part.getElementsByClass(stream.Measure):
            assert m.duration.quarterLength == 3.0  # every bar exactly full
    parsed = parse_xml(nt.write_musicxml(result.score, tmp_path / "dense.musicxml"))
    assert len(list(parsed.recurse().notes)) == len(list(result.score.recurse().notes))


# --------------------------------------------------------------------------- property test

STEMS = ["vocals", "bass", "other", "guitar"]  # every role; "other" is a grand staff
_finite_note = st.builds(
    lambda start, dur, pitch, vel, stem: Note(start, start + dur, pitch, vel, stem),
    st.floats(0, 600, allow_nan=False),
    st.one_of(
        st.floats(0, 0.2),  # tiny, including zero length
        st.floats(0.05, 8.0),
        st.floats(60.0, 300.0),  # huge: minutes
    ),
    st.integers(0, 127),
    st.integers(-10, 200),
    st.sampled_from(STEMS),
)
_bad_times = st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, -1e9])
_nasty_note = st.builds(  # NaN/inf/negative times, end <= start, pitches out of MIDI range
    Note,
    st.one_of(_bad_times, st.floats(0, 600)),
    st.one_of(_bad_times, st.floats(0, 600)),
    st.integers(-50, 300),
    st.integers(-10, 200),
    st.sampled_from(STEMS),
)
_note_lists = st.lists(st.one_of(_finite_note, _finite_note, _nasty_note), max_size=50).map(
    lambda ns: ns + ns[: len(ns) // 4]  # exact duplicates
)
_configs = st.builds(
    NotationConfig,
    # Slow tempi keep 900-second examples to a few hundred bars, so the music21
    # MusicXML parse-back of each example stays well under a second.
    tempo_override=st.sampled_from([40.0, 41.5, 45.0]),
    divisions_per_quarter=st.sampled_from([1, 2, 3, 4, 6, 8, 12]),
    time_signature=st.sampled_from(["4/4", "3/4", "6/8", "12/8"]),
    min_note_ms=st.sampled_from([0.0, 60.0]),
    merge_gap_ms=st.sampled_from([0.0, 40.0]),
)


def _notate_either_way(notes: list[Note], cfg: NotationConfig, as_mapping: bool) -> nt.NotationResult:
    if not as_mapping:
        return nt.notate(notes, cfg)
    grouped: dict[str, list[Note]] = {}
    for n in notes:
        grouped.setdefault(n.stem, []).append(n)
    return nt.notate(grouped, cfg)


def _check_score_invariants(result: nt.NotationResult, notes: list[Note], cfg: NotationConfig) -> None:
    """What must hold for any input: counts, full bars, spellable durations, onsets kept."""
    cleaned = [n for n in nt.clean_notes(notes, cfg) if n.start_s < nt.MAX_SCORE_SECONDS]
    assert result.n_notes == sum(result.n_notes_by_stem.values()) == len(cleaned)
    assert nt.MIN_BPM <= result.tempo_bpm <= nt.MAX_BPM
    if not cleaned:
        assert any(w.startswith("no notes") for w in result.warnings)
    bar_ql = None
    for part in result.score.parts:
        for m in part.getElementsByClass(stream.Measure):
            bar_ql = bar_ql or m.barDuration.quarterLength
            assert m.duration.quarterLength == bar_ql  # no over- or underfull bars
    for el in result.score.recurse().notesAndRests:
        assert el.quarterLength > 0
        assert el.duration.type not in ("complex", "inexpressible", "zero")
    # Every cleaned note starts a written note within half a grid step, and vice versa.
    sounding = sounding_notes(result.score, result.tempo_bpm, result.time_offset_s)
    half_step = 60.0 / (result.tempo_bpm * cfg.divisions_per_quarter) / 2 + 1e-6
    # The score starts at (or within half a grid step of) the first note, never after it.
    assert not cleaned or result.time_offset_s <= min(n.start_s for n in cleaned) + half_step
    for n in cleaned:
        assert any(p == n.pitch and abs(on - n.start_s) <= half_step for on, p, _ in sounding), n
    for on, p, dur in sounding:
        assert dur > 0
        assert any(n.pitch == p and abs(on - n.start_s) <= half_step for n in cleaned), (on, p)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes=_note_lists, cfg=_configs, as_mapping=st.booleans())
def test_notate_never_fails_and_exports(tmp_path_factory, notes, cfg, as_mapping):
    result = _notate_either_way(notes, cfg, as_mapping)
    _check_score_invariants(result, notes, cfg)

    out = tmp_path_factory.mktemp("prop")
    xml = nt.write_musicxml(result.score, out / "score.musicxml")
    parsed = parse_xml(xml)
    assert len(parsed.parts) == len(result.score.parts)
    written = sounding_notes(result.score, result.tempo_bpm)
    rounded = lambda ns: [(round(on, 6), midi, round(dur, 6)) for on, midi, dur in ns]  # noqa: E731
    assert rounded(sounding_notes(parsed, result.tempo_bpm)) == rounded(written)
    mid = nt.write_midi(result.score, out / "score.mid")
    assert len(midi_notes(mid)) == len(written)  # one MIDI note per tied chain


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    notes=_note_lists,
    cfg=st.builds(
        NotationConfig,
        divisions_per_quarter=st.sampled_from([2, 4, 12]),
        time_signature=st.sampled_from(["4/4", "3/4", "6/8"]),
        min_note_ms=st.sampled_from([0.0, 60.0]),
    ),
    as_mapping=st.booleans(),
)
def test_notate_never_fails_with_estimated_tempo(notes, cfg, as_mapping):
    # Tempo and key estimated from the (garbage) notes; export is covered above.
    result = _notate_either_way(notes, cfg, as_mapping)
    assert nt.FOLD_LOW_BPM <= result.tempo_bpm <= nt.FOLD_HIGH_BPM
    _check_score_invariants(result, notes, cfg)
