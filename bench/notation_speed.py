"""Notation speed: cleaning, tempo/key, quantisation, music21 score, MusicXML + MIDI per minute of audio.

    .venv/bin/python bench/notation_speed.py [AUDIO ...] [--repeat 3]

For each recording: decode, transcribe the mix once (Basic Pitch), then time notation alone
(median of ``--repeat``). Prints seconds per minute of audio and notation's share of the
song's total without separation (decode + transcription + notation). With Demucs in the
pipeline the share is far smaller (see bench/stage_timings.py --separation random:htdemucs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="*", default=[str(REPO / "examples" / "chorale.mp3")])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from rescored_ray import notation
    from rescored_ray.config import NotationConfig
    from rescored_ray.decode import decode_audio
    from rescored_ray.transcription import Transcriber

    transcriber = Transcriber()
    config = NotationConfig()
    print(f"{'recording':<22}{'audio s':>8}{'notes':>7}{'notation s':>12}{'s / min audio':>15}{'share of total':>16}")
    for path in args.audio:
        started = time.perf_counter()
        audio = decode_audio(path)
        decode_s = time.perf_counter() - started
        started = time.perf_counter()
        notes = transcriber.transcribe(audio)
        transcribe_s = time.perf_counter() - started

        def notate_and_write(notes=notes, audio=audio):
            result = notation.notate({"mix": notes}, config, audio=audio.samples, sample_rate=audio.sample_rate)
            with tempfile.TemporaryDirectory() as tmp:
                notation.write_musicxml(result.score, Path(tmp) / "score.musicxml")
                notation.write_midi(result.score, Path(tmp) / "score.mid")
            return result

        runs = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = notate_and_write()
            runs.append(time.perf_counter() - started)
        notation_s = statistics.median(runs)
        total = decode_s + transcribe_s + notation_s
        print(
            f"{Path(path).name:<22}{audio.duration_s:>8.1f}{result.n_notes:>7}{notation_s:>12.3f}"
            f"{notation_s / (audio.duration_s / 60):>15.3f}{100 * notation_s / total:>15.0f}%"
        )


if __name__ == "__main__":
    main()
