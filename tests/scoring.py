"""How close transcribed notes are to a rendered piece's ground truth (shared by the unit and SDK tests)."""

from __future__ import annotations

from typing import Any

import mir_eval
import numpy as np

F1_FLOOR = 0.75
"""Note-onset F1 that Basic Pitch must reach on the rendered chorale."""


def intervals_f1(piece: Any, intervals: np.ndarray, pitches: np.ndarray) -> float:
    """Note-onset F1 of notes given as (start, end) seconds and MIDI pitches against ``piece``."""
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
        piece.intervals,
        mir_eval.util.midi_to_hz(piece.pitches),
        intervals,
        mir_eval.util.midi_to_hz(pitches),
        offset_ratio=None,
    )
    return float(f1)


def onset_f1(piece: Any, notes: Any) -> float:
    """Note-onset F1 (50 ms, pitch within 50 cents, offsets ignored), as in mir_eval, of
    ``notes`` (a list of :class:`~rescored_ray.types.Note` or the SDK's notes DataFrame)
    against ``piece`` (a :class:`tests.media.RenderedPiece`)."""
    if hasattr(notes, "to_numpy"):  # a DataFrame
        intervals, pitches = notes[["start_s", "end_s"]].to_numpy(), notes["pitch"].to_numpy()
    else:
        if not notes:
            return 0.0
        intervals = np.array([[n.start_s, n.end_s] for n in notes])
        pitches = np.array([n.pitch for n in notes])
    return intervals_f1(piece, intervals, pitches)
