"""Our Transcriber against stock Basic Pitch (``basic_pitch.inference.predict``) on the same ONNX model.

    .venv/bin/python bench/transcribe_speed.py [AUDIO] [--repeat 3] [--device cpu|cuda]

Stock: ``predict(path, model_or_model_path=<nmp.onnx>)`` (loads and resamples the file with
librosa, one window per model call). Ours: decode once with PyAV (as the pipeline does),
then :meth:`Transcriber.transcribe` (arrays in, 16 windows per call, silent windows
skipped). Prints real-time factors, the ratio, and whether the notes are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def median_time(call, repeat: int):
    runs, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = call()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="?", default=str(REPO / "examples" / "chorale.mp3"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from basic_pitch.inference import Model, predict

    from rescored_ray.config import TranscriptionConfig
    from rescored_ray.decode import decode_audio
    from rescored_ray.transcription import Transcriber, default_model_path

    model_path = default_model_path()
    stock_model = Model(model_path)
    ours = Transcriber(TranscriptionConfig(device=args.device))
    duration = decode_audio(args.audio).duration_s

    stock_s, (_, _, stock_events) = median_time(lambda: predict(args.audio, stock_model), args.repeat)
    ours_s, notes = median_time(lambda: ours.transcribe(decode_audio(args.audio)), args.repeat)
    stock_notes = sorted((round(float(s), 4), round(float(e), 4), int(p)) for s, e, p, *_ in stock_events)
    our_notes = sorted((round(n.start_s, 4), round(n.end_s, 4), n.pitch) for n in notes)

    print(
        f"# {Path(args.audio).name}: {duration:.1f} s, model {model_path.name}, provider {ours.providers[0]}, "
        f"median of {args.repeat} (ours includes decoding)"
    )
    print(f"{'run':<34}{'seconds':>9}{'x real time':>13}")
    print(f"{'stock basic_pitch predict()':<34}{stock_s:>9.3f}{duration / stock_s:>13.1f}")
    print(f"{'ours (decode + Transcriber)':<34}{ours_s:>9.3f}{duration / ours_s:>13.1f}")
    print(
        f"speed-up: {stock_s / ours_s:.2f}x; notes identical: {'yes' if stock_notes == our_notes else 'NO'} "
        f"({len(our_notes)} ours, {len(stock_notes)} stock)"
    )


if __name__ == "__main__":
    main()
