"""The GPU check (run through bench/gpu_check.sh on a lent GPU machine); prints one table.

1. Demucs: full-size HTDemucs (RANDOM weights: the real model's compute) on 120 s of audio:
   stock ``apply_model`` fp32 against our Separator in fp32 and fp16 with 1, 4, 8 and 16
   chunks per forward pass, and the default (``precision: auto``, which must resolve to
   fp16 on CUDA); real-time factor, speed-up, relative error against stock fp32, and the
   per-stem SNR of fp16 against our fp32 (the CPU bound, > 35 dB, applied to the GPU path).
2. Basic Pitch's ONNX model through the project's session options (``transcription.session_options``):
   seconds of audio per second with the CUDA provider at the CPU default of windows per call and at the
   GPU default (256, padded to one shape), and with the CPU provider; a provider this
   onnxruntime lacks is reported as not available.
3. Packing: N processes, each holding its own full-size Demucs on the one GPU (the default
   precision, batched chunks), separating songs of 60 s: songs/hour in total and the GPU's
   busy share (NVML). This is what N Ray actors at 1/N GPU do on the card.
Sized to finish in a few minutes on an H200; every figure says what it measured.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROWS: list[tuple[str, str, str]] = []


def row(what: str, figure: str, note: str = "") -> None:
    ROWS.append((what, figure, note))
    print(f"{what:<46} {figure:<22} {note}", flush=True)


def synthetic_song(seconds: float, seed: int = 0) -> np.ndarray:
    """Stereo 44.1 kHz test signal (speed only: the model's weights are random anyway)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 44100)) / 44100
    tones = sum(np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t + f)) for f in (110, 220, 331, 440))
    mix = 0.1 * tones + 0.01 * rng.standard_normal(t.shape)
    return np.stack([mix, np.roll(mix, 100)]).astype(np.float32)


def demucs_section(seconds: float = 120.0) -> None:
    from separate_speed import compare  # bench/ is on sys.path: this script's own folder

    from rescored_ray.config import SeparationConfig
    from rescored_ray.separation import Separator, random_htdemucs
    from rescored_ray.types import Audio

    device = torch.device("cuda")
    model = random_htdemucs().to(device)
    audio = Audio(synthetic_song(seconds))
    variants = [("fp32", 1), ("fp32", 16), ("auto", 1), *[("fp16", chunks) for chunks in (1, 4, 8, 16)]]
    rows = compare(model, audio, device, variants, repeat=2)
    stock_s = rows[0][1]
    row("Demucs stock apply_model fp32", f"{seconds / stock_s:.1f}x real time", f"{stock_s:.2f} s for {seconds:.0f} s")
    for name, ours_s, error in rows[1:]:
        row(
            f"Demucs {name}",
            f"{seconds / ours_s:.1f}x real time",
            f"{stock_s / ours_s:.2f}x stock, rel. error {error:.1e}",
        )
    separators = {
        precision: Separator(SeparationConfig(model="random:htdemucs", device="cuda", precision=precision), model=model)
        for precision in ("fp32", "auto")
    }
    row("Demucs precision auto on CUDA resolves to", separators["auto"].precision)
    stems = {precision: separator.separate(audio) for precision, separator in separators.items()}
    snrs = {
        name: 10
        * np.log10(
            np.sum(ref.samples.astype(np.float64) ** 2)
            / max(np.sum((stems["auto"][name].samples - ref.samples).astype(np.float64) ** 2), 1e-30)
        )
        for name, ref in stems["fp32"].items()
    }
    row(
        "Demucs auto vs fp32, min SNR per stem",
        f"{min(snrs.values()):.1f} dB",
        ", ".join(f"{name} {snr:.1f}" for name, snr in snrs.items()),
    )
    torch.cuda.empty_cache()


def basic_pitch_section(model_path: Path, windows: int = 1024) -> None:
    import onnxruntime as ort

    from rescored_ray.config import TranscriptionConfig
    from rescored_ray.transcription import (
        AUDIO_N_SAMPLES,
        BATCH_WINDOWS,
        HOP_SIZE,
        INPUT_NAME,
        MODEL_SAMPLE_RATE,
        OUTPUT_NAMES,
        _providers,
        session_options,
    )

    available = ort.get_available_providers()
    audio_per_window = HOP_SIZE / MODEL_SAMPLE_RATE
    cases = [("cuda", BATCH_WINDOWS["cpu"]), ("cuda", BATCH_WINDOWS["cuda"]), ("cpu", BATCH_WINDOWS["cpu"])]
    for device, per_call in cases:
        name = f"Basic Pitch ONNX {device}, {per_call} windows/call"
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            row(name, "not available", f"onnxruntime {ort.__version__}: {available}")
            continue
        config = TranscriptionConfig(device=device)
        session = ort.InferenceSession(
            str(model_path), sess_options=session_options(config, os.cpu_count() or 1), providers=_providers(device)
        )
        batch = np.random.default_rng(0).standard_normal((per_call, AUDIO_N_SAMPLES, 1)).astype(np.float32) * 0.1
        session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})  # warm-up: the cuDNN search runs here
        calls = max(1, windows // per_call)
        started = time.perf_counter()
        for _ in range(calls):
            session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        elapsed = time.perf_counter() - started
        row(
            name,
            f"{calls * per_call * audio_per_window / elapsed:.0f}x real time",
            f"{calls * per_call / elapsed:.0f} windows/s, {session.get_providers()[0]}",
        )


def _packer(index: int, songs: int, seconds: float, ready, start, done) -> None:
    from rescored_ray.config import SeparationConfig
    from rescored_ray.separation import Separator, random_htdemucs
    from rescored_ray.types import Audio

    separator = Separator(
        SeparationConfig(model="random:htdemucs", device="cuda", batch_chunks=8), model=random_htdemucs()
    )
    audio = Audio(synthetic_song(seconds, seed=index))
    separator.separate(Audio(audio.samples[:, : 44100 * 10]))  # warm-up
    ready.put(index)
    start.wait()
    for _ in range(songs):
        separator.separate(audio)
    done.put(index)


def packing_section(counts=(1, 2, 4), songs_each: int = 4, seconds: float = 60.0) -> None:
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    context = mp.get_context("spawn")
    for count in counts:
        ready, done, start = context.Queue(), context.Queue(), context.Event()
        workers = [
            context.Process(target=_packer, args=(i, songs_each, seconds, ready, start, done)) for i in range(count)
        ]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get(timeout=300)
        busy: list[int] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():  # noqa: B023 - runs within this iteration
                busy.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)  # noqa: B023
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        started = time.perf_counter()
        sampler.start()
        start.set()
        for _ in workers:
            done.get(timeout=600)
        elapsed = time.perf_counter() - started
        stop.set()
        sampler.join()
        for worker in workers:
            worker.join(timeout=60)
        total = count * songs_each
        row(
            f"Packing: {count} Demucs process(es) on 1 GPU",
            f"{total / elapsed * 3600:.0f} songs/hour",
            f"{seconds:.0f} s songs, GPU busy {statistics.mean(busy):.0f} % (NVML)",
        )


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run this on the lent GPU machine (bench/gpu_check.sh)")
    print(
        f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} CPUs; "
        f"Demucs has RANDOM weights (real compute)",
        flush=True,
    )
    model_path = Path(os.environ.get("BASIC_PITCH_ONNX", ".gpu/nmp.onnx"))
    for section in (demucs_section, lambda: basic_pitch_section(model_path), packing_section):
        try:
            section()
        except Exception as exc:  # one broken section must not cost the others' figures
            row(
                f"section {getattr(section, '__name__', 'basic_pitch_section')} failed",
                type(exc).__name__,
                str(exc)[:120],
            )
    print("\n" + "=" * 100)
    print(f"{'measurement':<46} {'figure':<22} note")
    for what, figure, note in ROWS:
        print(f"{what:<46} {figure:<22} {note}")


if __name__ == "__main__":
    main()
