"""Which onnxruntime session options make Basic Pitch fastest here, with the notes unchanged.

    .venv/bin/python bench/onnx_sessions.py [AUDIO] [--seconds 60] [--repeat 5]

Times ``Transcriber.model_output`` (the ONNX part of transcription; resampling and note
decoding are the same in every variant) on AUDIO looped to ``--seconds``, for onnxruntime's
defaults (what stock ``basic_pitch.inference.predict`` gets) and for one setting changed at
a time from the project's default: intra-op threads, spinning of idle pool threads, graph
optimisation level, the CPU memory arena, windows per call. Each variant gets a warm-up
call, then the median of ``--repeat`` rounds (round-robin over the variants, so a change in
the machine's load hits all of them alike); every variant's notes are compared with the
default's. The chosen defaults live in ``TranscriptionConfig``; this is how they were chosen.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="?", default=str(REPO / "examples" / "chorale.mp3"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import onnxruntime as ort

    from rescored_ray.config import TranscriptionConfig
    from rescored_ray.decode import decode_audio
    from rescored_ray.transcription import Transcriber
    from rescored_ray.types import Audio

    decoded = decode_audio(args.audio)
    frames = int(args.seconds * decoded.sample_rate)
    audio = Audio(np.ascontiguousarray(np.tile(decoded.samples, (1, frames // decoded.frames + 1))[:, :frames]))
    default = TranscriptionConfig()
    threads = Transcriber(default).threads
    variants: list[tuple[str, dict]] = [
        ("onnxruntime defaults (stock)", {"stock_session": True}),
        ("project default", {}),
        *[(f"threads={n}", {"threads": n}) for n in sorted({1, 2, threads} - {threads})],
        (f"spinning={'off' if default.spinning else 'on'}", {"spinning": not default.spinning}),
        *[
            (f"graph_optimization={level}", {"graph_optimization": level})
            for level in ("basic", "extended", "all")
            if level != default.graph_optimization
        ],
        (f"memory_arena={'off' if default.memory_arena else 'on'}", {"memory_arena": not default.memory_arena}),
        *[(f"batch_windows={n}", {"batch_windows": n}) for n in (1, 4, 8, 16, 32, 64) if n != default.batch_windows],
    ]
    transcribers = {}
    for name, change in variants:
        stock = change.pop("stock_session", False)
        transcriber = Transcriber(default.model_copy(update=change))
        if stock:  # what basic_pitch.inference.Model builds: InferenceSession(path) with default options
            transcriber.session = ort.InferenceSession(str(transcriber.model_path), providers=["CPUExecutionProvider"])
        transcriber.model_output(audio)  # warm-up
        transcribers[name] = transcriber
    runs: dict[str, list[float]] = {name: [] for name in transcribers}
    outputs = {}
    for _ in range(args.repeat):  # round-robin, so a change in the machine's load hits every variant alike
        for name, transcriber in transcribers.items():
            started = time.perf_counter()
            outputs[name] = transcriber.model_output(audio)
            runs[name].append(time.perf_counter() - started)
    notes = {
        name: [(n.start_s, n.end_s, n.pitch) for n in transcribers[name].notes_from_output(output)]
        for name, output in outputs.items()
    }
    reference = notes["project default"]
    rows = [(name, statistics.median(runs[name]), notes[name]) for name in transcribers]

    print(
        f"# {Path(args.audio).name} looped to {args.seconds:.0f} s, onnxruntime {ort.__version__}, "
        f"median of {args.repeat}; default threads here: {threads}"
    )
    stock_s = rows[0][1]
    print(f"{'variant':<32}{'seconds':>9}{'x real time':>13}{'vs stock':>10}  notes")
    for name, seconds, notes in rows:
        same = "identical" if notes == reference else f"DIFFER ({len(notes)} vs {len(reference)})"
        print(f"{name:<32}{seconds:>9.3f}{args.seconds / seconds:>13.1f}{stock_s / seconds:>9.2f}x  {same}")


if __name__ == "__main__":
    main()
