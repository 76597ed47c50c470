"""Note refinement (issue 18) on short real renders through real Basic Pitch inference.

Each mechanism of :mod:`rescored_ray.refine` is guarded on a render made to need it (see
:mod:`tests.conditions`): the transcription with the tuned settings is compared with the
same settings but that one step switched off, and with stock Basic Pitch. Renders and model
outputs are made once per module.
"""

from __future__ import annotations

from dataclasses import dataclass

import mir_eval
import numpy as np
import pytest

from rescored_ray import refine
from rescored_ray.config import RefineConfig, TranscriptionConfig
from rescored_ray.decode import decode_audio
from rescored_ray.transcription import Transcriber
from rescored_ray.types import Note
from tests import conditions

pytestmark = pytest.mark.slow

CASES = {
    # name: (notes (onset, offset, MIDI), GM program, stem, condition, velocity)
    # G3 struck five times, 0.6 s apart, in a large reverberant room: stock hears the
    # reverb as new notes between the strokes.
    "room_repeats": ([(0.3 + 0.6 * k, 0.78 + 0.6 * k, 55) for k in range(5)], conditions.PIANO, "other", "room", 90),
    # Three chords in the room: the ringing E4 of the second is heard again under the third.
    "room_chords": (
        [
            (a, b, p)
            for a, b, ps in ((0.3, 1.0, (48, 55, 64)), (1.5, 2.2, (50, 57, 65)), (2.7, 3.4, (48, 55, 64)))
            for p in ps
        ],
        conditions.PIANO,
        "other",
        "room",
        90,
    ),
    # Two-voice string-ensemble chords: slow attacks, onsets found late.
    "strings": (
        [(a, a + 1.0, p) for a, ps in ((0.3, (60, 64)), (1.3, (62, 65)), (2.3, (64, 67)), (3.3, (60, 64))) for p in ps],
        conditions.STRINGS,
        "other",
        None,
        90,
    ),
    # A bass line on a fingered electric bass: its second harmonic is heard as an octave above.
    "bass": (
        [(0.3 + 0.5 * k, 0.75 + 0.5 * k, p) for k, p in enumerate((40, 43, 45, 47, 48, 45, 43, 40))],
        33,
        "bass",
        None,
        100,
    ),
    # Four long sung notes (GM voice oohs) with vibrato +-100 cents and a scoop into the third.
    "vibrato": (
        [(0.3, 1.5, 62), (1.6, 2.8, 69), (2.9, 4.1, 74), (4.2, 5.4, 67)],
        conditions.VOICE,
        "vocals",
        "vibrato",
        100,
    ),
}


@dataclass
class Case:
    intervals: np.ndarray
    pitches: np.ndarray
    stem: str
    output: dict[str, np.ndarray]
    audio: np.ndarray


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber(TranscriptionConfig())


@pytest.fixture(scope="module")
def cases(tmp_path_factory, transcriber):
    out = tmp_path_factory.mktemp("refine")
    made = {}
    for name, (notes, program, stem, condition, velocity) in CASES.items():
        wav, intervals, pitches = conditions.render_notes(
            out,
            name,
            notes,
            program=program,
            velocity=velocity,
            room=conditions.RoomSpec() if condition == "room" else None,
            vibrato=conditions.VibratoSpec(depth_cents=100.0, seed=16) if condition == "vibrato" else None,
        )
        audio = decode_audio(wav)
        made[name] = Case(intervals, pitches, stem, transcriber.model_output(audio), transcriber.model_input(audio))
    return made


def notes_with(transcriber: Transcriber, case: Case, config: TranscriptionConfig) -> list[Note]:
    transcriber.config = config
    return transcriber.notes_from_output(case.output, stem=case.stem, audio=case.audio)


def without(step: str, stem: str) -> TranscriptionConfig:
    """The tuned settings with one refinement step switched off for ``stem``."""
    return TranscriptionConfig(per_stem={stem: {"refine": {step: False}}})


STOCK = TranscriptionConfig(profile="stock")
TUNED = TranscriptionConfig()


def matched(case: Case, notes: list[Note], tolerance: float = 0.05) -> list[tuple[int, int]]:
    est = np.array([[n.start_s, n.end_s] for n in notes]).reshape(-1, 2)
    hz = mir_eval.util.midi_to_hz
    return mir_eval.transcription.match_notes(
        case.intervals,
        hz(case.pitches.astype(float)),
        est,
        hz(np.array([n.pitch for n in notes], dtype=float)),
        onset_tolerance=tolerance,
        offset_ratio=None,
    )


def onset_f1(case: Case, notes: list[Note]) -> float:
    n_match = len(matched(case, notes))
    return 2 * n_match / (len(notes) + len(case.pitches)) if notes else 0.0


# ---------------------------------------------------------------------------- the mechanisms


def test_a_reverb_tail_is_merged_and_repeated_notes_are_kept(transcriber, cases):
    case = cases["room_repeats"]
    stock = notes_with(transcriber, case, STOCK)
    ours = notes_with(transcriber, case, TUNED)
    assert len(stock) > 5 and onset_f1(case, stock) < 0.8  # stock hears the room between the strokes
    assert [n.pitch for n in ours] == [55] * 5  # every stroke kept, nothing else
    assert onset_f1(case, ours) == 1.0


def test_a_ringing_pitch_heard_again_is_merged_into_its_note(transcriber, cases):
    case = cases["room_chords"]
    ours = notes_with(transcriber, case, TUNED)
    kept = notes_with(transcriber, case, without("continuations", case.stem))

    def heard_again(notes):  # no true onset, and its pitch sounded until less than a second ago
        true = {j for _, j in matched(case, notes)}
        return [
            n
            for j, n in enumerate(notes)
            if j not in true and any(m.pitch == n.pitch and 0 <= n.start_s - m.end_s < 1.0 for m in notes if m is not n)
        ]

    assert heard_again(kept) and not heard_again(ours)
    assert onset_f1(case, ours) > onset_f1(case, kept) > onset_f1(case, notes_with(transcriber, case, STOCK))


def test_a_late_slow_attack_moves_to_where_it_starts(transcriber, cases):
    case = cases["strings"]

    def onset_errors(notes):
        pairs = matched(case, notes, tolerance=0.25)
        return np.array([notes[j].start_s - case.intervals[i, 0] for i, j in pairs])

    late = onset_errors(notes_with(transcriber, case, without("onsets", case.stem)))
    moved = onset_errors(notes_with(transcriber, case, TUNED))
    assert np.median(late) > 0.05  # the decoder's starts are late by more than the 50 ms window
    assert len(moved) >= len(case.pitches) - 1 and np.median(np.abs(moved)) < 0.025
    assert np.all(np.abs(moved) < 0.05)


def test_an_octave_harmonic_of_a_bass_note_is_dropped(transcriber, cases):
    case = cases["bass"]

    def octaves_above(notes):
        return [n for n in notes if n.pitch - 12 in set(case.pitches) and n.pitch not in set(case.pitches)]

    assert len(octaves_above(notes_with(transcriber, case, without("ghosts", "bass")))) >= 4
    ours = notes_with(transcriber, case, TUNED)
    assert not octaves_above(ours)
    assert onset_f1(case, ours) == 1.0


def test_a_note_with_vibrato_stays_whole_at_its_centre_pitch(transcriber, cases):
    case = cases["vibrato"]
    split = notes_with(transcriber, case, without("vibrato", "vocals"))
    ours = notes_with(transcriber, case, TUNED)
    assert len(split) > 2 * len(case.pitches)  # +-100 cents: the vibrato crosses into the neighbours
    assert [n.pitch for n in ours] == list(case.pitches)  # one note each, at the written pitch
    for (start, end), n in zip(case.intervals, ours, strict=True):
        assert abs(n.start_s - start) < 0.2 and n.end_s > end - 0.3


# ---------------------------------------------------------------------------- settings and plumbing


def test_stock_profile_and_refine_switch_leave_basic_pitch_s_notes(transcriber, cases):
    case = cases["room_chords"]
    transcriber.config = STOCK
    assert transcriber.settings_for("other").refine is None
    stock = notes_with(transcriber, case, STOCK)
    no_refine = notes_with(transcriber, case, TranscriptionConfig(refine=False, onset_threshold=0.5))
    assert [(n.start_s, n.end_s, n.pitch) for n in stock] == [(n.start_s, n.end_s, n.pitch) for n in no_refine]


def test_each_stem_kind_has_its_measured_settings_and_overrides_win():
    tuned = TranscriptionConfig()
    assert tuned.for_stem("vocals").refine.vibrato and not tuned.for_stem("other").refine.vibrato
    assert tuned.for_stem("guitar") == tuned.for_stem("other")  # same kind of sound
    assert tuned.for_stem("mix").refine is not None
    assert tuned.for_stem("vocals").maximum_frequency == 2100.0
    everywhere = TranscriptionConfig(onset_threshold=0.55, maximum_frequency=0)
    assert {everywhere.for_stem(s).onset_threshold for s in ("vocals", "bass", "other", "mix")} == {0.55}
    assert everywhere.for_stem("vocals").maximum_frequency is None  # 0 removes the limit
    one = TranscriptionConfig(per_stem={"bass": {"frame_threshold": 0.4, "refine": {"ghosts": False}}})
    assert one.for_stem("bass").frame_threshold == 0.4 and not one.for_stem("bass").refine.ghosts
    assert one.for_stem("other").refine.ghosts
    assert TranscriptionConfig(refine=False).for_stem("vocals").refine is None
    with pytest.raises(ValueError, match="vibrat"):
        TranscriptionConfig(per_stem={"vocals": {"refine": {"vibrat": True}}})


def test_refinement_survives_silence_and_empty_input(transcriber):
    silent = np.zeros(22050 * 2, dtype=np.float32)
    out = transcriber.model_output(silent, 22050)
    transcriber.config = TUNED
    assert transcriber.notes_from_output(out, stem="vocals", audio=silent) == []
    evidence = refine.Evidence.from_output(out, silent, np.arange(out["note"].shape[0]) / refine.FRAMES_PER_SECOND)
    assert refine.refine([], evidence, RefineConfig(vibrato=True)) == []
    assert np.all(evidence.energy_map() <= -90)
