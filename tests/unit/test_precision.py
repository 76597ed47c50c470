"""Separation precision: ``auto`` resolved from the CPU's flags (faked here) and the device,
an explicit setting winning, and the choice recorded where a job's record says how it ran."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rescored_ray import precision
from rescored_ray.config import PipelineConfig, SeparationConfig
from rescored_ray.decode import decode_audio
from rescored_ray.errors import ConfigError
from rescored_ray.pipeline import Pipeline
from rescored_ray.precision import cpu_flags, has_native_bf16, resolve_precision
from rescored_ray.separation import Separator, load_demucs

X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbogomips\t: 4000\n"


def _cpuinfo(tmp_path, text: str):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "extra, native",
    [
        ("avx512_bf16 avx512_vnni", True),  # Cooper Lake / Zen 4
        ("amx_bf16 amx_tile amx_int8", True),  # Sapphire Rapids and later
        ("avx512_vnni", False),  # AVX-512 without bf16: autocast would be emulated
        ("", False),
    ],
)
def test_native_bf16_comes_from_the_cpu_flags(tmp_path, extra, native):
    assert has_native_bf16(_cpuinfo(tmp_path, X86.format(extra=extra))) is native


def test_arm_features_line_is_read(tmp_path):
    path = _cpuinfo(tmp_path, "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")
    assert cpu_flags(path) == frozenset({"fp", "asimd", "bf16", "sve"})
    assert has_native_bf16(path) is False  # no x86 bf16 instructions named; arm's bf16 is not what we measured


def test_without_cpuinfo_torch_probes_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_flags(tmp_path / "missing") is None
    assert has_native_bf16(tmp_path / "missing") is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize(
    "requested, device, native, expected",
    [
        ("auto", "cpu", True, "bf16"),
        ("auto", "cpu", False, "fp32"),
        ("auto", "cuda", False, "fp16"),
        ("auto", "cuda", True, "fp16"),
        ("auto", "mps", True, "fp32"),
        ("fp32", "cpu", True, "fp32"),  # an explicit setting wins over the hardware
        ("bf16", "cpu", False, "bf16"),
        ("fp32", "cuda", False, "fp32"),
        ("fp16", "cpu", True, "fp16"),
    ],
)
def test_auto_resolution_and_explicit_settings(requested, device, native, expected):
    assert resolve_precision(requested, device, native_bf16=native) == expected


def test_auto_on_this_machine_follows_its_real_flags():
    native = has_native_bf16()
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("int8", "cpu")


@pytest.fixture(scope="module")
def unittest_model():
    return load_demucs("demucs_unittest")


def test_separator_reports_the_resolved_precision(unittest_model, monkeypatch):
    monkeypatch.setattr(precision, "_this_cpu_has_native_bf16", lambda: True)
    auto = Separator(SeparationConfig(model="demucs_unittest", device="cpu"), model=unittest_model)
    assert auto.precision == "bf16" and auto.ran_on[0]["precision"] == "bf16"
    explicit = Separator(
        SeparationConfig(model="demucs_unittest", device="cpu", precision="fp32"), model=unittest_model
    )
    assert explicit.precision == "fp32"
    monkeypatch.setattr(precision, "_this_cpu_has_native_bf16", lambda: False)
    assert Separator(SeparationConfig(model="demucs_unittest", device="cpu"), model=unittest_model).precision == "fp32"


def test_cpu_fallback_song_reports_the_cpus_precision(unittest_model, band_mix, monkeypatch):
    """A CUDA song that runs out of memory is redone on the CPU, in the CPU's precision."""
    monkeypatch.setattr(precision, "_this_cpu_has_native_bf16", lambda: True)
    sep = Separator(SeparationConfig(model="demucs_unittest", device="cpu"), model=unittest_model)
    sep.device, sep.precision = torch.device("cuda"), sep.precision_for(torch.device("cuda"))
    assert sep.precision == "fp16"
    real_apply = sep._apply

    def apply(mix, device, progress, checkpoint):
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_apply(mix, device, progress, checkpoint)

    sep._apply = apply
    sep.separate(decode_audio(band_mix.path))
    assert sep.ran_on == [{"device": "cpu (fallback)", "model": "demucs_unittest", "precision": "bf16"}]


@pytest.mark.parametrize("setting", ["auto", "fp32"])
def test_result_json_and_timeline_record_the_precision(band_mix, tmp_path, setting):
    cfg = PipelineConfig.model_validate(
        {
            "separation": {"model": "demucs_unittest", "precision": setting},
            "transcription": {"stems": ["other", "bass"]},
            "write_preview": False,
            "write_stems": False,
        }
    )
    result = Pipeline(cfg).run(str(band_mix.path), tmp_path / setting)
    expected = resolve_precision(setting, "cpu")
    written = json.loads((tmp_path / setting / "result.json").read_text())
    assert written["separation_precision"] == result.separation_precision == expected
    separation = [span for span in written["timeline"] if span["stage"] == "separation"]
    assert [worker["precision"] for worker in separation[0]["workers"]] == [expected]


def test_no_separation_records_no_precision(band_mix, tmp_path):
    cfg = PipelineConfig.model_validate({"separation": {"model": "none"}, "write_preview": False})
    assert Pipeline(cfg).run(str(band_mix.path), tmp_path).separation_precision is None


def test_auto_stems_stay_within_35_db_of_fp32(unittest_model, band_mix):
    """The safety bound of the default path, on Demucs' own test model and a rendered band mix
    (bench/precision_safety.py measures it on the full-size model too)."""
    audio = decode_audio(band_mix.path)
    fp32 = Separator(SeparationConfig(model="demucs_unittest", precision="fp32"), model=unittest_model).separate(audio)
    auto = Separator(SeparationConfig(model="demucs_unittest"), model=unittest_model).separate(audio)
    for name, reference in fp32.items():
        error = auto[name].samples - reference.samples
        snr = 10 * np.log10(
            np.sum(reference.samples.astype(np.float64) ** 2) / max(np.sum(error.astype(np.float64) ** 2), 1e-30)
        )
        assert snr > 35, (name, snr)
