"""Separation with a real Demucs model (Demucs' own ``demucs_unittest`` HDemucs)."""

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from rescored_ray.config import SeparationConfig
from rescored_ray.decode import decode_audio
from rescored_ray.errors import PipelineError
from rescored_ray.separation import FOUR_STEMS, ModelLoadError, Separator, load_demucs, random_htdemucs
from rescored_ray.types import Audio


@pytest.fixture(scope="module")
def separator():
    return Separator(SeparationConfig(model="demucs_unittest", device="cpu"))


def test_stems_have_the_mix_shape_and_rate(separator, band_mix):
    audio = decode_audio(band_mix.path)
    fractions = []
    stems = separator.separate(audio, progress=fractions.append)
    assert list(stems) == FOUR_STEMS == separator.sources
    for stem in stems.values():
        assert stem.samples.shape == audio.samples.shape and stem.samples.dtype == np.float32
        assert stem.sample_rate == audio.sample_rate and np.isfinite(stem.samples).all()
    assert fractions and fractions[-1] == pytest.approx(1.0) and fractions == sorted(fractions)
    # An untrained model still maps the mix to non-trivial outputs.
    assert max(np.abs(s.samples).max() for s in stems.values()) > 0


def test_chunked_progress_and_checkpoint_stop_the_song(band_mix):
    sep = Separator(SeparationConfig(model="demucs_unittest", device="cpu", segment=4.0, overlap=0.25))
    audio = decode_audio(band_mix.path)
    fractions = []
    sep.separate(audio, progress=fractions.append)
    assert len(fractions) >= 4 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)

    class Stop(PipelineError):
        pass

    calls = []

    def checkpoint():
        calls.append(1)
        if len(calls) == 2:
            raise Stop("soft time limit", stage="separation")

    with pytest.raises(Stop):
        sep.separate(audio, checkpoint=checkpoint)
    assert len(calls) == 2


def test_silence_gives_silent_stems_not_nan(separator):
    stems = separator.separate(Audio(np.zeros((2, 44100), dtype=np.float32)))
    assert all(not s.samples.any() for s in stems.values())


def test_cuda_oom_falls_back_to_cpu_for_that_song(band_mix, caplog):
    """Exercise the fallback path: the first (CUDA) attempt raises OutOfMemoryError."""
    sep = Separator(SeparationConfig(model="demucs_unittest", device="cpu"))
    sep.device = torch.device("cuda")  # pretend: the model stays on the CPU, the attempt fails
    real_apply = sep._apply
    devices = []

    def apply(mix, device, progress, checkpoint):
        devices.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_apply(mix, device, progress, checkpoint)

    sep._apply = apply
    audio = decode_audio(band_mix.path)
    with caplog.at_level(logging.WARNING, logger="rescored_ray.separation"):
        stems = sep.separate(audio)
    assert devices == ["cuda", "cpu"] and sep.cpu_fallbacks == 1
    assert "retrying this song on the CPU" in caplog.text
    assert stems["vocals"].samples.shape == audio.samples.shape


def test_random_htdemucs_is_full_size_and_labelled():
    model = random_htdemucs("htdemucs")
    n_params = sum(p.numel() for p in model.parameters())
    assert model.sources == FOUR_STEMS and model.samplerate == 44100
    assert 20e6 < n_params < 60e6  # the real htdemucs has ~42M parameters
    assert Separator(SeparationConfig(model="random:htdemucs"), model=model).is_random


def test_missing_local_repo_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_demucs("htdemucs", repo=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="local repo"):
        load_demucs("htdemucs", repo=tmp_path / "empty")


def test_offline_hub_error_names_the_cache_and_the_fix(tmp_path):
    """With the hub unreachable and nothing cached, loading by name explains what to do."""
    code = (
        "from rescored_ray.separation import load_demucs, ModelLoadError\n"
        "try:\n    load_demucs('htdemucs')\nexcept ModelLoadError as e:\n    print(e.message)\n"
    )
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "could not be loaded" in out.stdout, out.stderr[-2000:]
    assert "Hugging Face cache" in out.stdout and "HF_HUB_OFFLINE is set" in out.stdout
    assert str(tmp_path / "hf") in out.stdout


@pytest.mark.parametrize("model_name", ["small_htdemucs", "demucs_unittest"])
def test_batched_chunks_equal_stock_demucs(model_name):
    """batch_chunks > 1 runs the same chunks, padding and cross-fade as apply_model, batched (in fp32,
    where equal means equal; bf16 rounds differently in a bigger batch)."""
    from fractions import Fraction

    from demucs.htdemucs import HTDemucs

    from rescored_ray.config import SeparationConfig
    from rescored_ray.separation import Separator, _seeded, load_demucs
    from rescored_ray.types import Audio

    if model_name == "small_htdemucs":
        with _seeded(0):
            model = HTDemucs(
                sources=["drums", "bass", "other", "vocals"],
                channels=8,
                depth=4,
                t_layers=1,
                samplerate=44100,
                segment=Fraction(39, 5),
            ).eval()
    else:
        model = load_demucs("demucs_unittest")
    rng = np.random.default_rng(0)
    audio = Audio((0.1 * rng.standard_normal((2, 44100 * 20))).astype(np.float32))
    stock = Separator(SeparationConfig(model="demucs_unittest", device="cpu", precision="fp32"), model=model).separate(
        audio
    )
    fractions = []
    batched = Separator(
        SeparationConfig(model="demucs_unittest", device="cpu", precision="fp32", batch_chunks=3), model=model
    ).separate(audio, progress=fractions.append)
    for name in stock:
        reference = stock[name].samples
        error = np.linalg.norm(batched[name].samples - reference) / max(np.linalg.norm(reference), 1e-12)
        assert error < 1e-5, (name, error)
    assert fractions and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
