"""Default-path speed per stage, CLI against service against batch: one machine, one run.

    .venv/bin/python bench/default_speed.py [--pieces 4] [--seconds 30] [--separation random:htdemucs]

Renders N chorales (FluidSynth piano, MP3) and serves them on loopback, then transcribes
the same N songs three ways, each with its shipped defaults (only the Demucs model named):

- **CLI**: what ``rescored-ray transcribe`` runs (``load_settings`` defaults, one Pipeline in
  this process with every core), models loaded once first, songs one after another;
- **service**: ``configs/serve.yaml`` on a local Ray + Serve (the way ``rescored-ray serve``
  starts it), songs submitted over HTTP one after another, each waited for;

both after a warm-up song per worker that is not counted (its notation pays music21's
first-call cost, about 4 s, which a long-running worker pays once);
- **batch**: ``configs/batch.yaml`` through ``run_batch`` on a local Ray of this machine's cores
  (the way ``rescored-ray batch`` starts it), all songs in one run.

Per stage: audio seconds per wall second of that stage (the audio of all songs / the
stage's summed seconds; in batch, stages of different songs overlap, so these are the
stage's speed while sharing the cores). Last row: audio seconds per wall second end to
end (CLI: the songs' runs; service: submission to completion of each job; batch: the whole
run, actor start-up included). ``random:htdemucs`` is a full-size HTDemucs with RANDOM
weights: the real compute, so separation speed is real; its stems are noise, so notation
sees more notes than real stems would give.
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

STAGES = ("download", "decode", "separation", "transcription", "notation", "outputs", "upload")


def cli_path(urls: list[str], model: str, out: Path) -> dict:
    from rescored_ray.pipeline import Pipeline
    from rescored_ray.settings import load_settings

    pipeline = Pipeline(load_settings(env={}, overrides={"pipeline": {"separation": {"model": model}}}).pipeline)
    started = time.perf_counter()
    pipeline.load_models()
    load_s = time.perf_counter() - started
    pipeline.run(urls[0], out / "warm-up")
    stages: dict[str, float] = {}
    wall = 0.0
    for index, url in enumerate(urls):
        started = time.perf_counter()
        result = pipeline.run(url, out / str(index))
        wall += time.perf_counter() - started
        _add(stages, result.timings)
    return {
        "stages": stages,
        "wall": wall,
        "note": f"models loaded once in {load_s:.1f} s first",
        "precision": result.separation_precision,
    }


def service_path(urls: list[str], model: str, data_dir: Path) -> dict:
    from rescored_ray.client import Client
    from rescored_ray.service.runner import start_service, stop_service
    from rescored_ray.settings import load_settings

    config = load_settings(
        REPO / "configs" / "serve.yaml",
        env={},
        overrides={
            "service": {
                "data_dir": str(data_dir),
                "security": {"allow_private_networks": True},
                "limits": {"jobs_per_window": None, "max_active_jobs": None},
            },
            "pipeline": {"separation": {"model": model}},
        },
    )
    started = time.perf_counter()
    base = start_service(config, port=_free_port(), dashboard=False)
    start_s = time.perf_counter() - started
    stages: dict[str, float] = {}
    wall = 0.0
    try:
        with Client(base) as client:
            # one warm-up job per worker slot, all at once so each slot takes one (tempos: not duplicates)
            warm_ups = [
                client.submit(urls[0], tempo_override=100 + slot) for slot in range(config.service.worker_slots)
            ]
            for job in warm_ups:
                job.wait(timeout=900, progress=False)
            for url in urls:
                started = time.perf_counter()
                job = client.submit(url)
                final = job.wait(timeout=900, progress=False)
                wall += time.perf_counter() - started
                _add(stages, final["result"]["timings"])
                _add(
                    stages, {span["stage"]: span["seconds"] for span in final["timeline"] if span["stage"] == "upload"}
                )
    finally:
        stop_service()
    return {
        "stages": stages,
        "wall": wall,
        "note": f"service started in {start_s:.1f} s first",
        "precision": final["result"].get("separation_precision"),
    }


def batch_path(feed: str, model: str, out: Path) -> dict:
    import pyarrow.parquet as pq
    import ray

    from rescored_ray.batch import run_batch
    from rescored_ray.batch.plan import cluster_nodes, plan_batch
    from rescored_ray.settings import load_settings

    config = load_settings(
        REPO / "configs" / "batch.yaml", env={}, overrides={"pipeline": {"separation": {"model": model}}}
    )
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        plan = plan_batch(config, cluster_nodes())
        summary = run_batch([feed], str(out), config, progress_bars=False)
    finally:
        ray.shutdown()
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return {
        "stages": dict(summary.stage_s),
        "wall": summary.wall_s,
        "note": f"{summary.completed} completed; plan: {plan.describe()}",
        "precision": ",".join(sorted({str(row["separation_precision"]) for row in rows})),
    }


def _add(totals: dict[str, float], timings: dict[str, float]) -> None:
    for stage, seconds in timings.items():
        totals[stage] = totals.get(stage, 0.0) + float(seconds or 0.0)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--separation", default="random:htdemucs")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rescored_speed_") as tmp, MediaServer(Path(tmp) / "media") as server:
        (Path(tmp) / "media").mkdir(exist_ok=True)
        feed, audio_s = render_feed(Path(tmp) / "media", server, args.pieces, args.seconds)
        from rescored_ray.config import SourceConfig
        from rescored_ray.source import expand_playlist

        urls = [entry.url for entry in expand_playlist(feed, SourceConfig())]
        paths = {
            "CLI": cli_path(urls, args.separation, Path(tmp) / "cli"),
            "service": service_path(urls, args.separation, Path(tmp) / "service"),
            "batch": batch_path(feed, args.separation, Path(tmp) / "batch"),
        }
    load_after = os.getloadavg()

    random = " (RANDOM weights: real compute, noise stems)" if args.separation.startswith("random:") else ""
    print(
        f"\n# {args.pieces} songs, {audio_s:.1f} s of audio; separation {args.separation}{random}; "
        f"{os.cpu_count()} cores; commit {_commit()}; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    print("audio seconds per wall second of each stage (higher is faster)")
    print(f"| stage | {' | '.join(paths)} |")
    print(f"|---|{'---|' * len(paths)}")
    for stage in STAGES:
        cells = [f"{audio_s / run['stages'][stage]:.1f}" if run["stages"].get(stage) else "—" for run in paths.values()]
        print(f"| {stage} | {' | '.join(cells)} |")
    totals = [f"**{audio_s / run['wall']:.2f}**" for run in paths.values()]
    print(f"| **end to end** | {' | '.join(totals)} |")
    for name, run in paths.items():
        print(f"{name}: {run['note']}; separation precision {run['precision']}; wall {run['wall']:.1f} s")


if __name__ == "__main__":
    main()
