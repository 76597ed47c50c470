"""``ray job submit`` of jobs/transcribe_playlist.py against a local ``ray start --head`` cluster."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rescored_ray.batch.manifest import COMPLETED, FAILED, MANIFEST

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_runs_the_playlist_job(ray_head, rss_feed_info, tmp_path):
    config = tmp_path / "batch.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "batch": {
                    "download": {"num_cpus": 0.5, "concurrency": 2},
                    "transcriber": {"num_cpus": 1, "min_actors": 1, "max_actors": 1, "batch_size": 2},
                    "notation": {"num_cpus": 0.5, "concurrency": 2},
                    "backoff_base_s": 0.2,
                },
                "pipeline": {"separation": {"model": "none"}, "write_preview": False},
            }
        )
    )
    output = tmp_path / "out"
    started = time.monotonic()
    job = subprocess.run(
        [
            "ray",
            "job",
            "submit",
            "--address",
            ray_head.address,
            "--working-dir",
            str(REPO),
            "--submission-id",
            f"playlist-{int(time.time())}",
            "--",
            "python",
            "jobs/transcribe_playlist.py",
            rss_feed_info.url,
            "--output",
            str(output),
            "--config",
            str(config),
            "--quiet",
        ],
        env=ray_head.client_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    logs = job.stdout + job.stderr
    assert job.returncode == 0, logs[-4000:]
    assert "succeeded" in logs.lower(), logs[-2000:]
    good, total = len(rss_feed_info.good_items), len(rss_feed_info.items)
    assert f"{good} completed, {total - good} failed, 0 skipped" in logs, logs[-3000:]

    rows = pq.read_table(output / MANIFEST).to_pylist()
    assert sorted(row["status"] for row in rows) == sorted([COMPLETED] * good + [FAILED] * (total - good))
    assert all(Path(row["musicxml"]).is_file() for row in rows if row["status"] == COMPLETED)
    print(f"ray job submit -> SUCCEEDED in {time.monotonic() - started:.1f} s")


def test_job_submission_requires_the_token(ray_head):
    env = ray_head.client_env()
    env.pop("RAY_AUTH_MODE")
    env.pop("RAY_AUTH_TOKEN_PATH")
    env["HOME"] = str(ray_head.workdir)  # no ~/.ray/auth_token there either
    refused = subprocess.run(
        ["ray", "job", "list", "--address", ray_head.address], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert "authentication" in (refused.stdout + refused.stderr).lower()
