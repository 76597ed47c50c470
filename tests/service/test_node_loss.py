"""The node-loss fault matrix on a real three-node Ray cluster (tests/node_loss.py): a worker
node killed mid-separation, an ingress replica's node killed under SDK streams, ``redis-server``
killed with -9, the whole app redeployed. Zero lost, zero duplicated, every score served.

One test: the matrix runs as its own process (a driver belongs to one cluster, and this
session's Ray is another), on its own Redis, S3 server and Ray temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.ray
@pytest.mark.slow
def test_node_loss_matrix_loses_and_duplicates_nothing(media_dir, band_mix, chorale_encoded, tmp_path):
    out, work = tmp_path / "matrix.json", tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # its own cluster and token
    proc = subprocess.run(
        [sys.executable, "-m", "tests.node_loss", "--media", str(media_dir), "--out", str(out), "--workdir", str(work)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    print(proc.stdout)  # the matrix, for -s and for the log of a failure below
    result = json.loads(out.read_text())
    rows = {row["fault"]: row for row in result["rows"]}
    assert list(rows) == ["worker_node_lost", "ingress_node_lost", "redis_kill9", "app_redeployed"]
    for row in rows.values():
        counts = {k: row[k] for k in ("submitted", "completed", "failed", "lost", "duplicated", "scores_served")}
        assert counts["lost"] == counts["duplicated"] == counts["failed"] == 0, (counts, row["jobs"])
        assert counts["completed"] == counts["submitted"] == counts["scores_served"] > 0, (counts, row["jobs"])
    # each fault really hit a job in flight
    separating = rows["worker_node_lost"]["jobs"][0]
    assert separating["attempts"][0]["outcome"] == "lease_expired", separating
    assert separating["attempts"][0]["stage"] == "separation", separating
    ingress = rows["ingress_node_lost"]["details"]
    assert any("#Ingress#" in name for name in ingress["node_residents"]), ingress
    assert ingress["sdk_completed"] == 4, ingress["sdk"]
    assert ingress["sdk_reconnects"] >= 1, ingress["sdk"]  # a stream went through the lost replica
    redeployed = rows["app_redeployed"]["jobs"]
    assert any(a["outcome"] == "lease_expired" for job in redeployed for a in job["attempts"]), redeployed
    assert result["healthy_after"]
