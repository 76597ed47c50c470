"""Our Transcriber against stock Basic Pitch (``basic_pitch.inference.predict``) on the same ONNX model.

    .venv/bin/python bench/transcribe_speed.py [AUDIO] [--repeat 3] [--device cpu|cuda]

Stock: ``predict(path, model_or_model_path=<nmp.onnx>)`` (loads and resamples the file with
librosa, one window per model call, onnxruntime's default session). Ours: decode once with
PyAV (as the pipeline does), then :meth:`Transcriber.transcribe` (arrays in, 8 windows per
call, silent windows skipped) with its default session options (``TranscriptionConfig``),
and once more with onnxruntime's default session, to show what the options alone give.
Runs round-robin (a change in the machine's load hits every variant alike), median of
``--repeat``. Prints real-time factors, the ratios, and whether the notes are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def round_robin(calls: dict, repeat: int) -> dict:
    """name -> (median seconds, last result), each call warmed up once first."""
    results = {name: call() for name, call in calls.items()}
    runs: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            started = time.perf_counter()
            results[name] = call()
            runs[name].append(time.perf_counter() - started)
    return {name: (statistics.median(runs[name]), results[name]) for name in calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="?", default=str(REPO / "examples" / "chorale.mp3"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import onnxruntime as ort
    from basic_pitch.inference import Model, predict

    from rescored_ray.config import TranscriptionConfig
    from rescored_ray.decode import decode_audio
    from rescored_ray.transcription import Transcriber, default_model_path

    model_path = default_model_path()
    stock_model = Model(model_path)
    ours = Transcriber(TranscriptionConfig(device=args.device))
    plain = Transcriber(TranscriptionConfig(device=args.device))
    plain.session = ort.InferenceSession(str(model_path), providers=plain.session.get_providers())
    duration = decode_audio(args.audio).duration_s

    timed = round_robin(
        {
            "stock basic_pitch predict()": lambda: [(s, e, p) for s, e, p, *_ in predict(args.audio, stock_model)[2]],
            "ours, onnxruntime default session": lambda: plain.transcribe(decode_audio(args.audio)),
            "ours (decode + Transcriber)": lambda: ours.transcribe(decode_audio(args.audio)),
        },
        args.repeat,
    )
    stock_s, stock_events = timed["stock basic_pitch predict()"]
    stock_notes = sorted((round(float(s), 4), round(float(e), 4), int(p)) for s, e, p in stock_events)

    print(
        f"# {Path(args.audio).name}: {duration:.1f} s, model {model_path.name}, provider {ours.providers[0]}, "
        f"{ours.threads} threads, median of {args.repeat} (ours includes decoding)"
    )
    print(f"{'run':<36}{'seconds':>9}{'x real time':>13}{'vs stock':>10}  notes")
    for name, (seconds, events) in timed.items():
        notes = (
            stock_notes
            if name.startswith("stock")
            else sorted((round(n.start_s, 4), round(n.end_s, 4), n.pitch) for n in events)
        )
        same = "identical" if notes == stock_notes else f"DIFFER ({len(notes)} vs {len(stock_notes)})"
        print(f"{name:<36}{seconds:>9.3f}{duration / seconds:>13.1f}{stock_s / seconds:>9.2f}x  {same}")


if __name__ == "__main__":
    main()
