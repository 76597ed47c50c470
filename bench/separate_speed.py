"""Our Separator against stock Demucs on the same full-size model and audio.

    .venv/bin/python bench/separate_speed.py [AUDIO] [--seconds 30] [--repeat 3] [--device cpu|cuda]

Baseline: ``demucs.apply.apply_model(model, mix, shifts=0, split=True, overlap=0.25)`` under
``torch.no_grad`` (what ``demucs.separate`` does: one 7.8 s chunk per forward pass, fp32).
Ours: :class:`rescored_ray.separation.Separator` with its defaults (``precision: auto``: what
every CLI, service and batch user gets), in fp32 (must equal stock within 1e-4) and in
reduced precision (bf16 on CPU, fp16 on CUDA), each with one chunk per forward pass and
with ``--batch-chunks`` chunks per pass; the error against stock fp32 is measured:
relative error = ||ours - fp32|| / ||fp32|| over all stems. Each configuration gets one
warm-up call, then the median of ``--repeat`` rounds over all configurations in turn; ratios
against the stock run of the same process. The model is a full-size HTDemucs with
RANDOM weights (no weights can be downloaded here): the real model's compute, noise stems.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rescored_ray.config import SeparationConfig
from rescored_ray.precision import resolve_precision
from rescored_ray.separation import Separator, random_htdemucs
from rescored_ray.types import Audio

REPO = Path(__file__).resolve().parents[1]


def compare(model, audio: Audio, device: torch.device, variants, repeat: int) -> list[tuple[str, float, float | None]]:
    """Stock ``apply_model`` fp32, then our Separator for each ``(precision, batch_chunks)``:
    rows of (name, median seconds, relative error against stock). Every run gets one warm-up
    call (first-call allocations and kernel selection are not what a worker pays per song),
    then ``repeat`` rounds over all of them in turn, so a change in the machine's load hits
    every run alike. Shared with bench/gpu_check.py."""
    from demucs.apply import apply_model

    mix = torch.from_numpy(audio.samples)
    reference = mix.mean(0)
    normalised = ((mix - reference.mean()) / reference.std())[None].to(device)

    def stock():
        with torch.no_grad():
            out = apply_model(model, normalised, shifts=0, split=True, overlap=0.25, device=device).float().cpu()
        return out[0] * reference.std() + reference.mean()

    runs = {"stock apply_model fp32": stock}
    for precision, chunks in variants:
        separator = Separator(
            SeparationConfig(model="random:htdemucs", device=device.type, precision=precision, batch_chunks=chunks),
            model=model,
        )
        runs[f"ours {precision}, {chunks} chunk{'s' if chunks > 1 else ''}/pass"] = lambda separator=separator: (
            torch.from_numpy(np.stack([stem.samples for stem in separator.separate(audio).values()]))
        )
    outputs = {name: call() for name, call in runs.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, call in runs.items():
            started = time.perf_counter()
            outputs[name] = call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - started)
    stock_out = outputs["stock apply_model fp32"]
    return [
        (
            name,
            statistics.median(seconds[name]),
            None
            if name.startswith("stock")
            else float(torch.linalg.vector_norm(outputs[name] - stock_out) / torch.linalg.vector_norm(stock_out)),
        )
        for name in runs
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="?", default=str(REPO / "examples" / "chorale.mp3"))
    parser.add_argument("--seconds", type=float, default=30.0, help="audio length (the file is looped/cut to it)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-chunks", type=int, default=8, help="chunks per forward pass for the batched rows")
    args = parser.parse_args()

    from rescored_ray.decode import decode_audio

    decoded = decode_audio(args.audio)
    frames = int(args.seconds * decoded.sample_rate)
    samples = np.tile(decoded.samples, (1, int(np.ceil(frames / decoded.frames))))[:, :frames]
    audio = Audio(np.ascontiguousarray(samples), decoded.sample_rate)
    device = torch.device(args.device)
    reduced = "fp16" if device.type == "cuda" else "bf16"
    variants = [("auto", 1), ("fp32", 1), ("fp32", args.batch_chunks), (reduced, 1), (reduced, args.batch_chunks)]
    rows = compare(random_htdemucs().to(device), audio, device, variants, args.repeat)
    stock_s = rows[0][1]

    print(
        f"# {args.seconds:.0f} s of audio, device {device}, {torch.get_num_threads()} torch threads, "
        f"median of {args.repeat}; full-size HTDemucs with RANDOM weights (real compute)"
    )
    print(f"{'run':<26}{'seconds':>9}{'x real time':>13}{'vs stock':>10}{'rel. error vs stock fp32':>27}")
    for name, seconds, error in rows:
        print(
            f"{name:<26}{seconds:>9.2f}{args.seconds / seconds:>13.2f}{stock_s / seconds:>9.2f}x"
            f"{'' if error is None else f'{error:.2e}':>27}"
        )
    fp32_error = max(rows[2][2], rows[3][2])
    reduced_error = max(rows[4][2], rows[5][2])
    best = min(rows[1:], key=lambda row: row[1])
    print(
        f"fp32 (both) equal to stock within 1e-4: {'yes' if fp32_error < 1e-4 else 'NO'} ({fp32_error:.1e}); "
        f"{reduced} error bound 1e-2: {'within' if reduced_error < 1e-2 else 'EXCEEDED'} ({reduced_error:.1e}); "
        f"fastest: {best[0]} at {stock_s / best[1]:.2f}x stock"
    )
    print(
        f"default (precision auto = {resolve_precision('auto', device.type)}) against stock: "
        f"{stock_s / rows[1][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
