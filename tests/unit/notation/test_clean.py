"""Cleaning: untrusted model output becomes valid, de-fragmented notes."""

from __future__ import annotations

import pytest

from rescored_ray.config import NotationConfig
from rescored_ray.notation import clean_notes
from rescored_ray.types import Note


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
    cleaned = clean_notes(notes, cfg)
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
    cleaned = clean_notes(list(reversed(fragments)), cfg)
    assert len(cleaned) == 1
    assert cleaned[0].start_s == 0.0 and cleaned[0].end_s == pytest.approx(0.29)


def test_repeated_notes_are_not_merged_into_one():
    """Basic Pitch starts notes only at onsets: touching or equally strong notes are re-struck."""
    cfg = NotationConfig(min_note_ms=0, merge_gap_ms=40)
    touching = [Note(0.0, 0.5, 60, amplitude=0.6), Note(0.5, 1.0, 60, amplitude=0.3)]
    restruck = [Note(2.0, 2.5, 62, amplitude=0.6), Note(2.52, 3.0, 62, amplitude=0.6)]
    assert len(clean_notes(touching + restruck, cfg)) == 4


@pytest.mark.parametrize("garbage", [None, 42, "abc", [None, 1, "x"], [float("nan"), {"pitch": "x"}]])
def test_clean_notes_never_raises(garbage):
    assert clean_notes(garbage, NotationConfig()) == []
