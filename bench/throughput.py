"""Playlist throughput: the sequential worker of the original job design (docs/architecture.md) against the Ray Data pipeline, same run.

    .venv/bin/python bench/throughput.py [--pieces 6] [--seconds 40] [--separation random:htdemucs]

Renders N chorales (FluidSynth piano), serves them as an RSS feed on loopback, then:
  (a) sequential: one song at a time through download, Demucs, Basic Pitch, music21,
      models loaded once (one Celery worker slot);
  (b) the Ray Data batch pipeline (``run_batch``, configs/batch.yaml) on the same feed.
Prints wall time, songs/hour, audio seconds per second, the ratio b/a (also with (a)'s model
loading counted, since (b)'s wall time includes its actors' start-up), and the efficiency
of each: Demucs-only seconds for the same audio (summed separation time of run a) divided
by the run's wall time (1.0 = everything else hidden behind separation). ``random:htdemucs``
is a full-size HTDemucs with RANDOM weights: real compute, speed figures only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch_playlist import REPO, _commit, render_feed

from tests.media import MediaServer


def sequential(feed: str, config, out: Path) -> tuple[float, float, int, float, float]:
    """Run (a): returns wall seconds, audio seconds, songs, summed separation seconds, model load seconds."""
    from rescored_ray.pipeline import Pipeline
    from rescored_ray.source import expand_playlist

    pipeline = Pipeline(config.pipeline)
    started = time.perf_counter()
    pipeline.load_models()  # a worker loads its models once, before its first song
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    audio_s = separation_s = 0.0
    entries = expand_playlist(feed, config.pipeline.source)
    for entry in entries:
        result = pipeline.run(entry.url, out / entry.id)
        audio_s += result.duration_s
        separation_s += result.timings.get("separation", 0.0)
    return time.perf_counter() - started, audio_s, len(entries), separation_s, load_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--separation", default="random:htdemucs")
    parser.add_argument("--config", default=str(REPO / "configs" / "batch.yaml"))
    args = parser.parse_args()

    import ray

    from rescored_ray.batch import run_batch
    from rescored_ray.batch.runner import required_cpus
    from rescored_ray.settings import load_settings

    config = load_settings(args.config, overrides={"pipeline": {"separation": {"model": args.separation}}})
    with tempfile.TemporaryDirectory(prefix="rescored_throughput_") as tmp, MediaServer(Path(tmp) / "media") as server:
        (Path(tmp) / "media").mkdir(exist_ok=True)
        feed, audio_total = render_feed(Path(tmp) / "media", server, args.pieces, args.seconds)
        a_wall, _a_audio, a_songs, demucs_s, load_s = sequential(feed, config, Path(tmp) / "sequential")
        cpus = max(os.cpu_count() or 1, int(required_cpus(config) + 0.999))
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            started = time.perf_counter()  # Ray start-up is not counted; actor start-up and model loads are
            summary = run_batch([feed], str(Path(tmp) / "batch"), config, progress_bars=False)
            b_wall = time.perf_counter() - started
        finally:
            ray.shutdown()

    print(
        f"\n# {args.pieces} pieces, {audio_total:.1f} s of audio; separation {args.separation}"
        f"{' (RANDOM weights: speed only)' if args.separation.startswith('random:') else ''}; "
        f"{os.cpu_count()} cores; commit {_commit()}"
    )
    print(f"{'run':<28}{'wall s':>8}{'songs/h':>9}{'audio s/s':>11}{'efficiency':>12}")
    for name, wall, songs in (
        ("(a) sequential (Celery)", a_wall, a_songs),
        ("(a) + its model loading", a_wall + load_s, a_songs),
        ("(b) Ray Data pipeline", b_wall, summary.completed),
    ):
        print(f"{name:<28}{wall:>8.1f}{songs / wall * 3600:>9.0f}{audio_total / wall:>11.2f}{demucs_s / wall:>12.2f}")
    print(
        f"b/a speed ratio: {a_wall / b_wall:.2f}x ({(a_wall + load_s) / b_wall:.2f}x counting (a)'s model loading, "
        f"as (b)'s wall time counts its actors' start-up); Demucs-only seconds for this audio: {demucs_s:.1f}"
    )
    print(summary.line())
    print(summary.stage_table())


if __name__ == "__main__":
    main()
