"""Per-stage timings of one song through the pipeline, and each stage's real-time factor.

    .venv/bin/python bench/stage_timings.py [AUDIO] [--separation none|demucs_unittest|random:htdemucs] [--repeat N]

Prints, per stage, the median seconds over N runs and audio-seconds per second (x real
time). ``random:htdemucs`` is a full-size HTDemucs with RANDOM weights: the real model's
compute, meaningless stems; separation figures from it are speed figures only.
Models are loaded once (as a worker would) and their load time is reported separately.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from rescored_ray.config import PipelineConfig
from rescored_ray.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", nargs="?", default=str(REPO / "examples" / "chorale.mp3"))
    parser.add_argument("--separation", default="none")
    parser.add_argument("--stems", default=None, help="default: mix without separation, other,bass,vocals with")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    stems = (
        args.stems.split(",") if args.stems else (["mix"] if args.separation == "none" else ["other", "bass", "vocals"])
    )
    cfg = PipelineConfig.model_validate(
        {
            "separation": {"model": args.separation},
            "transcription": {"stems": stems},
            "write_preview": True,
        }
    )
    started = time.perf_counter()
    pipeline = Pipeline(cfg)
    pipeline.load_models()
    load_s = time.perf_counter() - started

    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as out:
            result = pipeline.run(args.audio, out)
        runs.append(result.timings | {"total": sum(result.timings.values())})
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    print(f"# {Path(args.audio).name}: {result.duration_s:.1f} s audio, separation={args.separation}, stems={stems}")
    print(
        f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"commit {commit or '?'}, {args.repeat} runs, models loaded in {load_s:.2f} s"
    )
    if args.separation.startswith("random:"):
        print("# NOTE: random-weight Demucs: separation timings are real compute, stems are noise")
    print(f"{'stage':<14}{'median s':>10}{'x real time':>14}{'share':>8}")
    total = statistics.median(r["total"] for r in runs)
    for stage in runs[0]:
        median = statistics.median(r[stage] for r in runs)
        share = "" if stage == "total" else f"{100 * median / total:.0f}%"
        speed = f"{result.duration_s / median:.1f}" if median >= 1e-3 else "-"
        print(f"{stage:<14}{median:>10.3f}{speed:>14}{share:>8}")
    print(f"notes={result.n_notes} key={result.key} tempo={result.tempo_bpm}")


if __name__ == "__main__":
    main()
