"""Decode stage: every common format to float32 stereo 44.1 kHz, and clear refusals."""

import numpy as np
import pytest

from rescored_ray.decode import decode_audio
from rescored_ray.errors import NonRetryableError
from rescored_ray.types import SAMPLE_RATE
from tests.media import read_wav


def test_wav_decodes_sample_exact(chorale):
    audio = decode_audio(chorale.path)
    reference, rate = read_wav(chorale.path)
    assert rate == SAMPLE_RATE and audio.sample_rate == SAMPLE_RATE
    reference = reference.T if reference.shape[0] != 2 else reference
    assert audio.samples.dtype == np.float32 and audio.samples.shape == reference.shape
    assert np.allclose(audio.samples, reference, atol=1e-6)


@pytest.mark.parametrize("fmt", ["mp3", "flac", "ogg", "opus", "m4a", "webm"])
def test_compressed_formats_decode_to_the_same_music(fmt, chorale, chorale_encoded):
    audio = decode_audio(chorale_encoded[fmt])
    assert audio.samples.shape[0] == 2 and audio.sample_rate == SAMPLE_RATE
    assert abs(audio.duration_s - chorale.duration_s) < 0.1
    reference = decode_audio(chorale.path).samples

    # Codec delay differs per format: compare loudness envelopes (0.1 s frames), not samples.
    def envelope(x):
        frames = x.mean(axis=0)[: int(len(x[0]) // 4410) * 4410].reshape(-1, 4410)
        return np.sqrt((frames**2).mean(axis=1))

    a, b = envelope(audio.samples), envelope(reference)
    n = min(len(a), len(b))
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.95


def test_mono_is_duplicated_not_attenuated(broken_inputs):
    audio = decode_audio(broken_inputs["mono_8k"])
    assert audio.sample_rate == SAMPLE_RATE and audio.channels == 2
    assert np.array_equal(audio.samples[0], audio.samples[1])
    mono, rate = read_wav(broken_inputs["mono_8k"])
    assert rate == 8000
    # Same level as the mono file (FFmpeg's default mono->stereo upmix would be -3 dB, ratio 0.71).
    ratio = np.sqrt((audio.samples[0] ** 2).mean()) / np.sqrt((np.asarray(mono, dtype=np.float64) ** 2).mean())
    assert 0.95 < ratio < 1.05


@pytest.mark.parametrize("name", ["hires_96k", "surround_6ch"])
def test_other_rates_and_layouts_become_stereo_44k(broken_inputs, chorale, name):
    audio = decode_audio(broken_inputs[name])
    assert audio.samples.shape[0] == 2 and audio.sample_rate == SAMPLE_RATE
    assert np.abs(audio.samples).max() > 0.01


@pytest.mark.parametrize(
    "name, words",
    [
        ("empty", "empty"),
        ("random", "not a recognised audio"),
        ("html", "not a recognised audio"),
        ("truncated_mp3", "truncated"),
        ("truncated_wav", "truncated"),
    ],
)
def test_broken_files_are_permanent_decode_errors(broken_inputs, name, words):
    with pytest.raises(NonRetryableError, match=words) as info:
        decode_audio(broken_inputs[name])
    assert info.value.stage == "decode" and info.value.retryable is False
    assert broken_inputs[name].name in info.value.message


def test_too_long_is_refused_from_the_header(broken_inputs):
    with pytest.raises(NonRetryableError, match=r"over the 15\.0 min limit"):
        decode_audio(broken_inputs["long"], max_duration_s=900)


def test_silence_decodes_as_silence(broken_inputs):
    audio = decode_audio(broken_inputs["silent"])
    assert audio.duration_s == pytest.approx(10.0, abs=0.01) and not audio.samples.any()


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(NonRetryableError, match="does not exist"):
        decode_audio(tmp_path / "nope.wav")
