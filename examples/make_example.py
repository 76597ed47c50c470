"""Regenerate the bundled demo input ``examples/chorale.mp3`` and its ground truth.

    .venv/bin/python examples/make_example.py            # writes into examples/
    .venv/bin/python examples/make_example.py --out DIR  # somewhere else

Needs the ``fluidsynth`` program and the FluidR3_GM soundfont
(Debian/Ubuntu: ``apt-get install fluidsynth fluid-soundfont-gm``); uses
music21's bundled corpus, pretty_midi and PyAV from the project's venv.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.media import decode_info, encode, render_chorale  # noqa: E402

CORPUS = "bach/bwv26.6"  # "Ach wie flüchtig, ach wie nichtig", BWV 26 no. 6
TEMPO_BPM = 100
PROGRAM = 0  # GM acoustic grand piano
MP3_BITRATE = 128_000
DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "examples")
    ap.add_argument("--soundfont", type=Path, default=DEFAULT_SOUNDFONT)
    args = ap.parse_args(argv)
    if not args.soundfont.is_file():
        ap.error(f"{args.soundfont} not found: apt-get install fluid-soundfont-gm, or pass --soundfont")

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        piece = render_chorale(tmp, CORPUS, tempo_bpm=TEMPO_BPM, program=PROGRAM, soundfont=args.soundfont)
        mp3 = encode(piece.path, "mp3", args.out / "chorale.mp3", bitrate=MP3_BITRATE)
    csv = piece.write_truth_csv(args.out / "chorale.truth.csv")
    info = decode_info(mp3)
    print(
        f"{mp3}: {info['duration_s']:.2f} s, {info['sample_rate']} Hz, {info['channels']} ch, "
        f"{mp3.stat().st_size / 1024:.0f} KiB"
    )
    print(
        f"{csv}: {piece.n_notes} notes, pitches {piece.pitches.min()}-{piece.pitches.max()}, "
        f"onsets {piece.first_onset_s:.3f}-{piece.onsets.max():.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
