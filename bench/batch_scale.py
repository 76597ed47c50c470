"""A long playlist through the real batch path, measured: driver memory, object store, manifest,
crash and resume (issue 17).

    .venv/bin/python bench/batch_scale.py --entries 1000 --clip-seconds 3 --json out/scale-1000.json
    .venv/bin/python bench/batch_scale.py --entries 1000 --clip-seconds 3 --kill-at 0.5 --json out/kill.json

Makes N distinct clips (distinct excerpts of a few FluidSynth renders, FLAC), serves them on
loopback as an RSS feed and as a URL list, starts a local Ray, and runs ``rescored-ray batch``
on the feed (``--input list``: the URL list) as a separate driver process joined to that Ray:
real yt-dlp, Ray Data, Basic Pitch, music21; separation ``none`` unless ``--separation``
(``demucs_unittest`` is the small one). While it runs, samples the driver's RSS, the object
store's use (Ray's memory API, what ``ray memory --stats-only`` shows) and the manifest parts on
disk. ``--kill-at F`` SIGKILLs the driver once a fraction F of the entries has a score, waits
until Ray has ended its job, then runs the same command again. Writes one JSON; figures are
described in ``tests/scale.py``.

    .venv/bin/python bench/batch_scale.py --list-only --entries 10000 --json out/list-10000.json

lists an N-entry feed and an N-line URL file (entries whose audio does not exist) the way a
run does, and reports the time, the requests made and the memory it took (tracemalloc peak).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.media import MediaServer  # noqa: E402
from tests.scale import make_clips, measure, write_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--clip-seconds", type=float, default=3.0)
    parser.add_argument("--separation", default="none")
    parser.add_argument("--kill-at", type=float, default=None, help="SIGKILL the driver at this fraction, resume")
    parser.add_argument("--input", choices=("feed", "list"), default="feed", help="the RSS feed or the URL list")
    parser.add_argument("--object-store-mib", type=int, default=256, help="the run's object store cap (Ray Data)")
    parser.add_argument("--flush-rows", type=int, default=16, help="manifest part every this many entries")
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local Ray")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0)
    parser.add_argument("--workdir", default=None, help="keep clips, outputs and driver logs here")
    parser.add_argument("--list-only", action="store_true", help="only list the inputs (no audio, no Ray)")
    parser.add_argument("--json", required=True, help="where to write the figures")
    args = parser.parse_args()
    if args.list_only:
        _write(args.json, list_only(args.entries, Path(args.workdir or tempfile.mkdtemp(prefix="rescored_list_"))))
        return

    import ray

    load_before = os.getloadavg()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rescored_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    with MediaServer(work / "media") as server:
        (work / "media").mkdir(exist_ok=True)
        started = time.perf_counter()
        clips = make_clips(work / "media", server, args.entries, args.clip_seconds)
        clips_s = time.perf_counter() - started
        print(f"{args.entries} clips of {args.clip_seconds:g} s in {clips_s:.1f} s: {clips.feed_url}", flush=True)
        config = write_config(
            work / "batch.yaml",
            separation=args.separation,
            flush_rows=args.flush_rows,
            object_store_mib=args.object_store_mib,
        )
        ray.init(num_cpus=args.cpus, include_dashboard=True, log_to_driver=False, configure_logging=False)
        try:
            address = ray.get_runtime_context().gcs_address
            figures = measure(
                clips, work, address, config, source=args.input, kill_at=args.kill_at, timeout_s=args.timeout
            )
        finally:
            ray.shutdown()
    figures.update(
        clip_seconds=args.clip_seconds,
        separation=args.separation,
        input=args.input,
        object_store_cap_mib=args.object_store_mib,
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        machine={
            "node": platform.node(),
            "cores": os.cpu_count(),
            "ray_cpus": args.cpus,
            "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()],
        },
        commit=_commit(),
        workdir=str(work),
    )
    _write(args.json, figures)


def _write(path: str, figures: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=2, default=str))


def list_only(n: int, work: Path) -> dict:
    """List an ``n``-entry feed and URL file as a run does: time, requests, memory."""
    import tracemalloc

    from rescored_ray.batch.inputs import expand_inputs
    from tests.media import FeedItem, write_rss_feed

    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"entries": n, "command": " ".join([Path(sys.executable).name, *sys.argv]), "commit": _commit()}
    with MediaServer(work) as server:
        urls = [server.url(f"clips/clip-{i:05d}.flac") for i in range(n)]
        items = [FeedItem(f"Clip {i}", url, "audio/flac", 1000, 3.0, f"clip-{i:05d}") for i, url in enumerate(urls)]
        write_rss_feed(work / "feed.xml", items)
        (work / "urls.txt").write_text("\n".join(urls) + "\n")
        for kind, source in (("feed", server.url("feed.xml")), ("list", str(work / "urls.txt"))):
            server.requests.clear()
            tracemalloc.start()
            started = time.perf_counter()
            entries, failures = expand_inputs([source], max_playlist_entries=max(n, 1))
            wall = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            figures[kind] = {
                "listed": len(entries),
                "failures": len(failures),
                "wall_s": round(wall, 2),
                "requests": [r.path for r in server.requests],
                "python_peak_mib": round(peak / 2**20, 1),
                "records_mib": round(
                    sum(sys.getsizeof(e) + sum(map(sys.getsizeof, e.to_row().values())) for e in entries) / 2**20, 1
                ),
            }
    figures["load"] = [round(v, 2) for v in os.getloadavg()]
    return figures


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
