"""Transcription with the real Basic Pitch ONNX model on rendered chorales."""

import logging

import numpy as np
import pytest

from rescored_ray.config import TranscriptionConfig
from rescored_ray.decode import decode_audio
from rescored_ray.transcription import Transcriber
from rescored_ray.types import Audio
from tests.scoring import F1_FLOOR, onset_f1


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber(TranscriptionConfig())


def test_chorale_transcribes_with_onset_f1_above_floor(transcriber, chorale):
    notes = transcriber.transcribe(decode_audio(chorale.path), stem="mix")
    f1 = onset_f1(chorale, notes)
    logging.getLogger(__name__).warning(
        "chorale onset F1 = %.3f (%d notes vs %d true)", f1, len(notes), chorale.n_notes
    )
    assert f1 >= F1_FLOOR
    assert all(n.stem == "mix" and 1 <= n.velocity <= 127 and n.end_s > n.start_s for n in notes)


def test_stock_profile_matches_basic_pitch_predict_exactly(chorale):
    """Same ONNX model, same windows: with ``profile: stock`` our batched array path gives
    stock's notes (the benchmarks compare against exactly these)."""
    transcriber = Transcriber(TranscriptionConfig(profile="stock"))
    logging.disable(logging.WARNING)
    try:
        from basic_pitch import ICASSP_2022_MODEL_PATH
        from basic_pitch.inference import Model, predict
    finally:
        logging.disable(logging.NOTSET)
    stock_model = Model(ICASSP_2022_MODEL_PATH.with_name("nmp.onnx"))
    _, _, events = predict(str(chorale.path), stock_model)
    stock = sorted((round(float(s), 6), round(float(e), 6), int(p)) for s, e, p, _, _ in events)
    ours = sorted(
        (round(n.start_s, 6), round(n.end_s, 6), n.pitch) for n in transcriber.transcribe(decode_audio(chorale.path))
    )
    assert ours == stock and len(ours) > 50


def test_tuned_notes_are_refined_and_more_accurate_than_stock(transcriber, chorale):
    audio = decode_audio(chorale.path)
    ours = transcriber.transcribe(audio)
    stock = Transcriber(TranscriptionConfig(profile="stock")).transcribe(audio)
    assert onset_f1(chorale, ours) > onset_f1(chorale, stock)
    assert all(n.end_s > n.start_s and 1 <= n.velocity <= 127 for n in ours)
    # without audio there is no evidence to refine with: the decoder's notes as they are
    unrefined = transcriber.notes_from_output(transcriber.model_output(audio), stem="mix")
    assert unrefined == Transcriber(TranscriptionConfig(refine=False)).transcribe(audio)


def test_thresholds_and_frequency_range_are_applied(chorale):
    audio = decode_audio(chorale.path)
    default = Transcriber(TranscriptionConfig()).transcribe(audio)
    strict = Transcriber(TranscriptionConfig(onset_threshold=0.8, frame_threshold=0.5)).transcribe(audio)
    assert 0 < len(strict) < len(default)
    high_only = Transcriber(TranscriptionConfig(minimum_frequency=261.63)).transcribe(audio)  # C4 and up
    assert high_only and min(n.pitch for n in high_only) >= 60
    long_only = Transcriber(TranscriptionConfig(minimum_note_length_ms=500)).transcribe(audio)
    assert long_only and min(n.duration_s for n in long_only) > 0.45


def test_stems_are_transcribed_and_tagged_drums_skipped(transcriber, chorale):
    audio = decode_audio(chorale.path)
    quiet = Audio(audio.samples * 0.0, audio.sample_rate)
    seen = []
    result = transcriber.transcribe_stems(
        {"other": audio, "bass": audio, "drums": audio, "vocals": quiet},
        ["other", "bass", "drums", "vocals"],
        progress=lambda f, name: seen.append((round(f, 2), name)),
    )
    assert list(result) == ["other", "bass", "vocals"]
    assert all(n.stem == "other" for n in result["other"]) and result["other"]
    assert result["vocals"] == []  # silence gives no notes
    assert seen == [(0.33, "other"), (0.67, "bass"), (1.0, "vocals")]


def test_short_and_empty_inputs(transcriber):
    assert transcriber.transcribe(Audio(np.zeros((2, 0), dtype=np.float32))) == []
    assert transcriber.transcribe(Audio(np.zeros((2, 441), dtype=np.float32))) == []
    # A bare 22.05 kHz mono array works too.
    t = np.arange(22050) / 22050
    out = transcriber.model_output(np.sin(2 * np.pi * 440 * t).astype(np.float32), 22050)
    assert out["note"].shape == (86, 88) and out["contour"].shape == (86, 264)
