"""notate() end to end on notes we make: overrides, metadata, layout, invariants for any input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from music21 import clef, instrument, key, layout, stream, tempo

from rescored_ray.config import NotationConfig
from rescored_ray.errors import NonRetryableError, UnexpectedError
from rescored_ray.notation import MAX_SCORE_SECONDS, clean_notes, notate, write_midi, write_musicxml
from rescored_ray.notation.rhythm import TPQ
from rescored_ray.types import Note
from tests.unit.notation.helpers import midi_notes, parse_xml, staff_pitches, written_notes


def _melody(bpm: float, pickup_beats: int, bars: int, beats: int = 4, pitch0: int = 67) -> list[Note]:
    """A tune of quarters and halves with a long note opening each bar, after a pickup."""
    spb = 60.0 / bpm
    notes, t = [], 0.5
    for k in range(pickup_beats):
        notes.append(Note(t, t + spb, pitch0 - 2 + k, 80))
        t += spb
    for b in range(bars):
        notes.append(Note(t, t + 2 * spb, pitch0 + (b % 3) * 2, 100))
        for k in range(2, beats):
            notes.append(Note(t + k * spb, t + (k + 1) * spb, pitch0 + 4 - k, 70))
        notes.append(Note(t, t + beats * spb, 43 + (b % 2) * 5, 90))  # bass on every downbeat
        t += beats * spb
    return notes


def test_overrides_win():
    notes = _melody(100, 1, 8)
    fixed = notate(notes, NotationConfig(time_signature="3/4", tempo_override=90, key_override="Bb"))
    assert (fixed.time_signature, fixed.key, fixed.tempo_bpm) == ("3/4", "Bb major", 90.0)
    ts = fixed.score.recurse().getElementsByClass("TimeSignature").first()
    assert ts.ratioString == "3/4"
    assert fixed.score.parts[0].recurse().getElementsByClass(key.KeySignature).first().sharps == -2
    assert fixed.score.recurse().getElementsByClass(tempo.MetronomeMark).first().number == 90


@pytest.mark.parametrize("bad", ["H major", "C lydian", "xyz"])
def test_garbage_key_override_is_permanent(bad):
    with pytest.raises(NonRetryableError) as info:
        notate([Note(0, 1, 60)], NotationConfig(key_override=bad))
    assert info.value.stage == "notation" and info.value.retryable is False


@pytest.mark.parametrize("bad", ["banana", "4/3", "3/16"])
def test_garbage_time_signature_is_permanent(bad):
    with pytest.raises(NonRetryableError) as info:
        notate([Note(0, 1, 60)], NotationConfig(time_signature=bad))
    assert info.value.stage == "notation"


def test_unexpected_failures_follow_the_one_rule():
    class Exploding(NotationConfig):
        @property
        def min_note_ms(self):
            raise RuntimeError("boom")

    with pytest.raises(UnexpectedError) as info:
        notate([Note(0, 1, 60)], Exploding.model_construct())
    assert info.value.stage == "notation" and info.value.retryable is True


def test_a_pickup_is_an_implicit_measure_zero(tmp_path):
    result = notate(_melody(96, 1, 10), NotationConfig(time_signature="4/4"))
    assert result.pickup_ql == 1.0
    xml = write_musicxml(result.score, tmp_path / "pickup.musicxml").read_text()
    assert '<measure implicit="yes" number="0"' in xml
    measures = parse_xml(tmp_path / "pickup.musicxml").parts[0].getElementsByClass(stream.Measure)
    assert [m.number for m in measures][:3] == [0, 1, 2]
    assert measures[0].duration.quarterLength == 1.0
    assert all(m.duration.quarterLength == 4.0 for m in measures[1:])
    # the score's tick 0 is the pickup's start in the recording
    assert result.time_offset_s == pytest.approx(0.5, abs=0.03)


def test_parts_staves_names_and_clefs(tmp_path):
    notes = [
        Note(0.0, 1.0, 72, stem="other"),
        Note(0.0, 1.0, 60, stem="other"),
        Note(0.0, 1.0, 45, stem="other"),
        Note(1.0, 2.0, 74, stem="other"),
        Note(1.0, 2.0, 43, stem="other"),
        Note(0.0, 1.0, 38, stem="bass"),
        Note(0.0, 1.0, 67, stem="vocals"),
        Note(0.0, 1.0, 52, stem="guitar"),
    ]
    result = notate(notes, NotationConfig(tempo_override=120, time_signature="4/4"))

    def check(score):
        groups = list(score.getElementsByClass(layout.StaffGroup))
        assert len(groups) == 1 and groups[0].symbol == "brace"
        rh, lh = groups[0].getSpannedElements()
        assert staff_pitches(rh) == [60, 72, 74]
        assert staff_pitches(lh) == [43, 45]
        assert isinstance(rh.recurse().getElementsByClass(clef.Clef).first(), clef.TrebleClef)
        assert isinstance(lh.recurse().getElementsByClass(clef.Clef).first(), clef.BassClef)

    check(result.score)
    assert [p.partName for p in result.score.parts] == ["Vocals", "Guitar", "Other", "Other", "Bass"]
    assert isinstance(result.score.parts[0].getInstrument(), instrument.Vocalist)
    assert isinstance(result.score.parts[-1].getInstrument(), instrument.ElectricBass)
    clefs = {p.partName: p.recurse().getElementsByClass(clef.Clef).first() for p in result.score.parts}
    assert isinstance(clefs["Guitar"], clef.Treble8vbClef) and isinstance(clefs["Bass"], clef.BassClef)
    check(parse_xml(write_musicxml(result.score, tmp_path / "grand.musicxml")))


def test_title_artist_and_credit(tmp_path):
    result = notate(_melody(100, 0, 4), NotationConfig(), title="Greensleeves", artist="Anon.")
    xml = write_musicxml(result.score, tmp_path / "t.musicxml").read_text()
    assert "<work-title>Greensleeves</work-title>" in xml or "<movement-title>Greensleeves</movement-title>" in xml
    assert '<creator type="composer">Anon.</creator>' in xml
    assert "rescored-ray" in xml and "Music21" not in xml
    assert notate([Note(0, 1, 60)], NotationConfig(title="Mine"), title="Theirs").score.metadata.title == "Mine"


def test_empty_input_gives_an_empty_score_and_a_warning(tmp_path):
    for empty in ([], {"vocals": [], "bass": []}, [Note(float("nan"), 1.0, 60)]):
        result = notate(empty, NotationConfig())
        assert result.n_notes == 0
        assert any(w.startswith("no notes") for w in result.warnings), result.warnings
        assert not list(result.score.recurse().notes)
        assert len(parse_xml(write_musicxml(result.score, tmp_path / "empty.musicxml")).parts) >= 1


def test_notes_past_the_horizon_are_dropped_with_a_warning():
    notes = [Note(0.5, 1.5, 60), Note(MAX_SCORE_SECONDS + 5, MAX_SCORE_SECONDS + 6, 62)]
    result = notate(notes, NotationConfig(tempo_override=120))
    assert result.n_notes == 1 and any("after 3600 s" in w for w in result.warnings)


def test_result_survives_pickling(tmp_path):
    result = notate(_melody(100, 1, 4), NotationConfig())
    for _ in range(3):
        clone = pickle.loads(pickle.dumps(result))
        assert (clone.key, clone.tempo_bpm, clone.pickup_ql) == (result.key, result.tempo_bpm, result.pickup_ql)
        assert written_notes(parse_xml(write_musicxml(clone.score, tmp_path / "c.musicxml"))) == written_notes(
            result.score
        )


# --------------------------------------------------------------------------- property test

STEMS = ["vocals", "bass", "other", "guitar"]  # every role; "other" is a grand staff
_finite_note = st.builds(
    lambda start, dur, pitch, vel, stem: Note(start, start + dur, pitch, vel, stem),
    st.floats(0, 600, allow_nan=False),
    st.one_of(st.floats(0, 0.2), st.floats(0.05, 8.0), st.floats(60.0, 300.0)),
    st.integers(0, 127),
    st.integers(-10, 200),
    st.sampled_from(STEMS),
)
_bad_times = st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, -1e9])
_nasty_note = st.builds(
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


def _notate_either_way(notes: list[Note], cfg: NotationConfig, as_mapping: bool):
    if not as_mapping:
        return notate(notes, cfg)
    grouped: dict[str, list[Note]] = {}
    for n in notes:
        grouped.setdefault(n.stem, []).append(n)
    return notate(grouped, cfg)


def _check_invariants(result, notes: list[Note], cfg: NotationConfig) -> None:
    """For any input: counts, full bars (a shorter pickup first), spellable values, onsets kept."""
    cleaned = [n for n in clean_notes(notes, cfg) if n.start_s < MAX_SCORE_SECONDS]
    assert result.n_notes == sum(result.n_notes_by_stem.values()) == len(cleaned)
    for part in result.score.parts:
        measures = list(part.getElementsByClass(stream.Measure))
        bar = measures[-1].barDuration.quarterLength
        for i, m in enumerate(measures):
            assert m.duration.quarterLength == (result.pickup_ql if i == 0 and result.pickup_ql else bar)
    for el in result.score.recurse().notesAndRests:
        assert el.quarterLength > 0 and el.duration.type not in ("complex", "inexpressible", "zero")
    # every cleaned note starts a written note of its pitch near its onset, and vice versa
    tempo_marks = dict(result.tempo_changes)
    if not cleaned:
        assert any(w.startswith("no notes") for w in result.warnings)
        return
    written = written_notes(result.score)
    spq = 60.0 / result.tempo_bpm  # seconds per quarter (tempo overrides are steady)
    assert len(tempo_marks) == 1
    # the grid step an onset may land on: the finest plain step no finer than 1/divisions of a
    # quarter (a lone onset never makes a triplet, and a compound beat divides into eighths)
    beat_ql = 1.5 if result.time_signature in ("6/8", "9/8", "12/8") else 1.0
    step_ql = min(s for s in (beat_ql, 0.5, 0.25, 0.125) if s >= 1 / cfg.divisions_per_quarter - 1e-9)
    tol = spq * step_ql / 2 + 0.07 * spq + 1e-6
    onsets = [(result.time_offset_s + on * spq, p) for on, p, _ in written]
    for n in cleaned:
        assert any(p == n.pitch and abs(t - n.start_s) <= tol for t, p in onsets), (n, tol)
    for t, p in onsets:
        assert any(n.pitch == p and abs(t - n.start_s) <= tol for n in cleaned), (t, p)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    notes=_note_lists,
    cfg=st.builds(
        NotationConfig,
        tempo_override=st.sampled_from([40.0, 41.5, 45.0]),
        divisions_per_quarter=st.sampled_from([1, 2, 3, 4, 6, 8, 12]),
        time_signature=st.sampled_from(["auto", "4/4", "3/4", "6/8", "12/8", "2/2"]),
        min_note_ms=st.sampled_from([0.0, 60.0]),
        merge_gap_ms=st.sampled_from([0.0, 40.0]),
    ),
    as_mapping=st.booleans(),
)
def test_notate_never_fails_and_exports(tmp_path_factory, notes, cfg, as_mapping):
    result = _notate_either_way(notes, cfg, as_mapping)
    _check_invariants(result, notes, cfg)
    out = tmp_path_factory.mktemp("prop")
    parsed = parse_xml(write_musicxml(result.score, out / "score.musicxml"))
    assert len(parsed.parts) == len(result.score.parts)
    assert written_notes(parsed) == written_notes(result.score)
    mid = write_midi(result.score, out / "score.mid")
    assert len(midi_notes(mid)) == len(written_notes(result.score))  # one MIDI note per tied chain


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes=_note_lists, as_mapping=st.booleans())
def test_notate_never_fails_with_everything_estimated(notes, as_mapping):
    result = _notate_either_way(notes, NotationConfig(), as_mapping)
    assert 20 <= result.tempo_bpm <= 400
    assert result.time_signature in {"2/4", "3/4", "4/4", "2/2", "6/8", "9/8", "12/8"}
    cleaned = clean_notes(notes, NotationConfig())
    assert result.n_notes == len([n for n in cleaned if n.start_s < MAX_SCORE_SECONDS])
    assert np.isfinite(result.time_offset_s)
    assert TPQ * result.pickup_ql == int(TPQ * result.pickup_ql)
