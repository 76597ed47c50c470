"""Playlist throughput: the sequential worker of the original job design (docs/architecture.md) against the Ray Data pipeline, same run.

    .venv/bin/python bench/throughput.py [--pieces 20] [--seconds 30] [--separation random:htdemucs]

Renders N chorales (FluidSynth piano), serves them as an RSS feed on loopback, then:
  (a) sequential: one song at a time through download, Demucs, Basic Pitch, music21 in one
      process with every core, models loaded once (one Celery worker slot);
  (b) the Ray Data batch pipeline (``run_batch``, configs/batch.yaml: pools planned from the
      local Ray's resources) on the same feed. Ray's own start-up is not counted; its actors'
      start-up and model loads are.
Both run the default path (``precision: auto``, the tuned onnxruntime session). Prints wall
time, songs/hour and audio seconds per second of each, the ratio b/a (also with (a)'s model
loading counted, as (b)'s wall time counts its actors' start-up), and where (b)'s wall time
went, from each entry's stage timeline (result.json): start-up and fill before the first
separation, Demucs busy (and how much slower than in (a), from sharing the cores), Demucs
waiting for input, and the drain after the last separation. ``random:htdemucs`` is a
full-size HTDemucs with RANDOM weights: real compute, speed figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch_playlist import REPO, _commit, render_feed

from tests.media import MediaServer


def sequential(feed: str, config, out: Path) -> dict:
    """Run (a): wall seconds, audio seconds, songs, summed stage seconds, model load seconds."""
    from rescored_ray.pipeline import Pipeline
    from rescored_ray.source import expand_playlist

    pipeline = Pipeline(config.pipeline)
    started = time.perf_counter()
    pipeline.load_models()  # a worker loads its models once, before its first song
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    audio_s, stages = 0.0, {}
    entries = expand_playlist(feed, config.pipeline.source)
    for entry in entries:
        result = pipeline.run(entry.url, out / entry.id)
        audio_s += result.duration_s
        for stage, seconds in result.timings.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    return {
        "wall": time.perf_counter() - started,
        "audio": audio_s,
        "songs": len(entries),
        "stages": stages,
        "load": load_s,
        "precision": result.separation_precision,
    }


def where_time_went(output: Path, run_started: float, run_ended: float) -> dict:
    """Breakdown of a batch run's wall time from its entries' timelines (epoch seconds)."""
    import pyarrow.parquet as pq

    spans = []
    for row in pq.read_table(output / "manifest.parquet").to_pylist():
        if row["status"] == "completed":
            spans += json.loads(Path(row["result"]).read_text())["timeline"]
    separations = [span for span in spans if span["stage"] == "separation"]
    by_actor: dict[int, list[dict]] = {}
    for span in separations:
        by_actor.setdefault(span["workers"][0]["pid"], []).append(span)
    busy = {pid: sum(span["seconds"] for span in actor) for pid, actor in by_actor.items()}
    waiting = {
        pid: max(s["ended_at"] for s in actor) - min(s["started_at"] for s in actor) - busy[pid]
        for pid, actor in by_actor.items()
    }
    first = min(span["started_at"] for span in separations)
    last = max(span["ended_at"] for span in separations)
    written = max(span["ended_at"] for span in spans)
    return {
        "fill": first - run_started,
        "busy": sum(busy.values()) / len(busy),
        "waiting": sum(waiting.values()) / len(waiting),
        "actors": len(by_actor),
        "drain": written - last,
        "tail": run_ended - written,
        "busy_total": sum(busy.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--separation", default="random:htdemucs")
    parser.add_argument("--config", default=str(REPO / "configs" / "batch.yaml"))
    args = parser.parse_args()

    import ray

    from rescored_ray.batch import run_batch
    from rescored_ray.batch.plan import cluster_nodes, plan_batch
    from rescored_ray.settings import load_settings

    config = load_settings(args.config, overrides={"pipeline": {"separation": {"model": args.separation}}})
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rescored_throughput_") as tmp, MediaServer(Path(tmp) / "media") as server:
        (Path(tmp) / "media").mkdir(exist_ok=True)
        feed, audio_total = render_feed(Path(tmp) / "media", server, args.pieces, args.seconds)
        a = sequential(feed, config, Path(tmp) / "sequential")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            plan = plan_batch(config, cluster_nodes())
            started, epoch = time.perf_counter(), time.time()
            summary = run_batch([feed], str(Path(tmp) / "batch"), config, progress_bars=False)
            b_wall = time.perf_counter() - started
            went = where_time_went(Path(tmp) / "batch", epoch, epoch + b_wall)
        finally:
            ray.shutdown()
    load_after = os.getloadavg()

    random = " (RANDOM weights: speed only)" if args.separation.startswith("random:") else ""
    print(
        f"\n# {args.pieces} pieces, {audio_total:.1f} s of audio; separation {args.separation}{random}, "
        f"precision {a['precision']}; {os.cpu_count()} cores; commit {_commit()}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(f"plan: {plan.describe()}")
    print(f"{'run':<28}{'wall s':>8}{'songs/h':>9}{'audio s/s':>11}")
    for name, wall, songs in (
        ("(a) sequential (Celery)", a["wall"], a["songs"]),
        ("(a) + its model loading", a["wall"] + a["load"], a["songs"]),
        ("(b) Ray Data pipeline", b_wall, summary.completed),
    ):
        print(f"{name:<28}{wall:>8.1f}{songs / wall * 3600:>9.0f}{audio_total / wall:>11.2f}")
    print(
        f"b/a speed ratio: {a['wall'] / b_wall:.3f}x ({(a['wall'] + a['load']) / b_wall:.3f}x counting (a)'s model "
        f"loading, as (b)'s wall time counts its actors' start-up); {summary.completed} of {args.pieces} completed"
    )

    total_a = sum(a["stages"].values())
    print(
        "\n(a) summed stage seconds: "
        + ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in a["stages"].items())
        + f"; not separation: {100 * (1 - a['stages'].get('separation', 0) / total_a):.1f} % of {total_a:.1f} s"
    )
    separation_a = a["stages"].get("separation", 0.0)
    print(f"(b) where the {b_wall:.1f} s went ({went['actors']} Demucs actor(s); per actor where it says so):")
    rows = [
        ("start-up and fill (run start -> first separation)", went["fill"]),
        ("Demucs busy, per actor", went["busy"]),
        ("Demucs waiting for input between songs, per actor", went["waiting"]),
        ("drain (last separation end -> last entry written)", went["drain"]),
        ("after the last entry (manifest, pool shutdown)", went["tail"]),
    ]
    for name, seconds in rows:
        print(f"  {name:<54}{seconds:>8.1f} s")
    print(
        f"  Demucs in (b) {went['busy_total']:.1f} s summed against {separation_a:.1f} s in (a): "
        f"{100 * (went['busy_total'] / separation_a - 1):+.1f} % from sharing the cores with the other stages"
    )
    print(summary.line())
    print(summary.stage_table())


if __name__ == "__main__":
    main()
