"""A playlist of rendered pieces through the Ray Data batch pipeline: songs/hour and where the time went.

    .venv/bin/python bench/batch_playlist.py [--pieces 6] [--seconds 30] [--separation random:htdemucs]
                                             [--config configs/batch.yaml] [--cpus N]

Renders N Bach chorales (FluidSynth, piano) to MP3, serves them as an RSS feed on a
loopback HTTP server, and runs ``run_batch`` on the feed exactly as
``rescored-ray batch`` would (real yt-dlp download, Demucs, Basic Pitch, music21).
Prints the run's summary line, the summed seconds per stage over all entries, and the
pipeline's efficiency: summed separation seconds / wall time (1.0 = every other stage
hidden behind Demucs; above 1.0 = several separators ran at once).

``random:htdemucs`` is a full-size HTDemucs with RANDOM weights: the real model's
compute (speed figures only; its stems are noise, so notation sees many notes).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.media import FeedItem, MediaServer, encode, render_chorale, write_rss_feed  # noqa: E402

CHORALES = [
    "bach/bwv66.6",
    "bach/bwv26.6",
    "bach/bwv40.8",
    "bach/bwv244.3",
    "bach/bwv248.42-4",
    "bach/bwv269",
    "bach/bwv253",
    "bach/bwv254",
    "bach/bwv255",
    "bach/bwv256",
    "bach/bwv257",
    "bach/bwv258",
    "bach/bwv1.6",
    "bach/bwv10.7",
    "bach/bwv101.7",
    "bach/bwv102.7",
    "bach/bwv103.6",
    "bach/bwv104.6",
    "bach/bwv108.6",
    "bach/bwv11.6",
]


def render_feed(folder: Path, server: MediaServer, pieces: int, seconds: float) -> tuple[str, float]:
    if pieces > len(CHORALES):
        raise SystemExit(f"at most {len(CHORALES)} pieces")

    def one(corpus: str):
        piece = render_chorale(folder, corpus, tempo_bpm=90, max_seconds=seconds)
        return piece, encode(piece.path, "mp3")

    with ThreadPoolExecutor(max_workers=2) as pool:
        rendered = list(pool.map(one, CHORALES[:pieces]))
    items = [
        FeedItem(
            title=piece.name,
            url=server.url(audio.relative_to(folder)),
            mime="audio/mpeg",
            length=audio.stat().st_size,
            duration_s=piece.duration_s,
            guid=piece.name,
            piece=piece,
        )
        for piece, audio in rendered
    ]
    write_rss_feed(folder / "feed.xml", items, link=server.base_url + "/")
    return server.url("feed.xml"), sum(piece.duration_s for piece, _ in rendered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each piece (cut from the chorale)")
    parser.add_argument("--separation", default="random:htdemucs")
    parser.add_argument("--config", default=str(REPO / "configs" / "batch.yaml"))
    parser.add_argument(
        "--cpus", type=int, default=None, help="logical CPUs for the local Ray (default: this machine's cores)"
    )
    args = parser.parse_args()

    import ray

    from rescored_ray.batch import run_batch
    from rescored_ray.settings import load_settings

    config = load_settings(args.config, overrides={"pipeline": {"separation": {"model": args.separation}}})
    with tempfile.TemporaryDirectory(prefix="rescored_bench_") as tmp, MediaServer(Path(tmp) / "media") as server:
        media = Path(tmp) / "media"
        media.mkdir(exist_ok=True)
        started = time.perf_counter()
        feed, audio_s = render_feed(media, server, args.pieces, args.seconds)
        print(f"rendered {args.pieces} pieces, {audio_s:.1f} s of audio, in {time.perf_counter() - started:.1f} s")
        cpus = args.cpus or os.cpu_count() or 1
        started = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - started:.1f} s ({cpus} logical CPUs on {os.cpu_count()} cores)")
        try:
            summary = run_batch([feed], str(Path(tmp) / "out"), config, progress_bars=False)
        finally:
            ray.shutdown()

    print()
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"commit {_commit()}; separation {args.separation}"
        + (" (RANDOM weights: speed only)" if args.separation.startswith("random:") else "")
    )
    print(summary.line())
    print("summed stage seconds over completed entries:")
    print(summary.stage_table())
    separation = summary.stage_s.get("separation", 0.0)
    if separation:
        print(f"efficiency (separation seconds / wall seconds): {separation / summary.wall_s:.2f}")
    print(f"audio seconds per wall second: {summary.audio_s / summary.wall_s:.2f}")
    for row in summary.failures:
        print(f"failed {row['id']} ({row.get('stage')}): {row.get('error')}")


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
