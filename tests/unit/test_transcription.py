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


@pytest.mark.parametrize(
    "settings",
    [
        {},  # the tuned session defaults
        {"threads": 1, "batch_windows": 1, "graph_optimization": "basic", "memory_arena": False, "spinning": True},
        {"inter_op_threads": 2, "batch_windows": 64, "graph_optimization": "extended"},
    ],
)
def test_stock_profile_matches_basic_pitch_predict_exactly(chorale, settings):
    """Same ONNX model, same windows: with ``profile: stock`` our batched array path gives
    stock's notes whatever the session options (they change how the graph runs, never what
    it computes; the benchmarks compare against exactly these)."""
    transcriber = Transcriber(TranscriptionConfig(profile="stock", **settings))
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


def test_session_options_follow_the_config():
    transcriber = Transcriber(
        TranscriptionConfig(
            threads=1,
            inter_op_threads=2,
            spinning=False,
            graph_optimization="extended",
            memory_arena=False,
            batch_windows=8,
        )
    )
    options = transcriber.session.get_session_options()
    assert transcriber.threads == options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 2 and options.execution_mode.name == "ORT_PARALLEL"
    assert options.graph_optimization_level.name == "ORT_ENABLE_EXTENDED"
    assert options.enable_cpu_mem_arena is False
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert transcriber.batch_windows == 8 and transcriber.pad_batches is False
    default = Transcriber(TranscriptionConfig())
    assert default.batch_windows == 8 and default.session.get_session_options().execution_mode.name == "ORT_SEQUENTIAL"


def test_threads_come_from_the_cpus_ray_grants(ray_cluster):
    """Outside Ray: every CPU of the process; in an actor: its grant, rounded up, at most the process's CPUs."""
    from rescored_ray.resources import process_cpus

    assert Transcriber(TranscriptionConfig()).threads == process_cpus()

    @ray_cluster.remote
    class Holder:
        def threads(self, configured=None):
            return Transcriber(TranscriptionConfig(threads=configured)).threads

    expected = {0.5: 1, 1: 1, 2: min(2, process_cpus())}
    for cpus, threads in expected.items():
        holder = Holder.options(num_cpus=cpus).remote()
        assert ray_cluster.get(holder.threads.remote()) == threads, cpus
        if cpus == 1:
            assert ray_cluster.get(holder.threads.remote(3)) == 3  # an explicit setting wins
        ray_cluster.kill(holder)


def test_stems_share_model_calls_and_fixed_shape_batches_change_nothing(transcriber, chorale, band_mix):
    """The windows of all stems go through the model together; on a GPU every call is padded to
    one shape. Both give exactly the notes of one stem at a time, unpadded."""
    stems = {"other": decode_audio(chorale.path), "bass": decode_audio(band_mix.path)}
    alone = {name: transcriber.transcribe(audio, stem=name) for name, audio in stems.items()}
    assert transcriber.transcribe_stems(stems, ["other", "bass"]) == alone
    padded = Transcriber(TranscriptionConfig(batch_windows=12))
    padded.pad_batches = True  # what the CUDA provider gets
    assert padded.transcribe_stems(stems, ["other", "bass"]) == alone
