"""Fault injection against real Ray: the service loses nothing and does nothing twice.

One Serve app (demucs_unittest separation, Basic Pitch, one worker slot, 3 s leases) whose
data dir (ledger, temp files, results) sits on a small tmpfs when this machine lets us
mount one, so the disk can really fill up. Each fault runs with jobs in flight, then
every job is accounted for: submitted, completed, failed, lost (unknown or never
finished), duplicated (completed by more than one attempt). The matrix is written to
``test-artifacts/fault-matrix.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.service_app import deploy, replica_actor, wait_for_stage

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SEPARATED = {"stems": ["other", "bass"]}
MATRIX: dict[str, dict] = {}


@pytest.fixture(scope="module")
def data_disk(tmp_path_factory):
    """A 128 MiB tmpfs for the service's data dir, or a plain folder where mounting is not allowed."""
    path = tmp_path_factory.mktemp("faults-disk")
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(path)], capture_output=True).returncode
        == 0
    )
    yield {"path": path, "tmpfs": mounted}
    if mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def service(serve_port, data_disk):
    from ray import serve

    data_dir = data_disk["path"] / "data"
    deploy(data_dir)
    client = httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=30)
    client.data_dir = data_dir
    yield client
    client.close()
    serve.delete("rescored")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fault-matrix.json").write_text(json.dumps(MATRIX, indent=2) + "\n")


def _submit(client, url, n, tag):
    ids = []
    for index in range(n):
        response = client.post("/api/v1/transcribe", json={"url": f"{url}?fault={tag}-{index}", "options": SEPARATED})
        assert response.status_code == 201, response.text
        ids.append(response.json()["job_id"])
    return ids


def _get(client, job_id):
    deadline = time.monotonic() + 60
    while True:  # the ingress may be restarting with the rest of the app
        try:
            response = client.get(f"/api/v1/jobs/{job_id}")
            if response.status_code in (200, 404):
                return response.json() if response.status_code == 200 else None
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the service did not answer for 60 s")
        time.sleep(0.3)


def _until_running(client, job_id, stage="separation", timeout=60):
    wait_for_stage(str(client.base_url), job_id, stage, timeout)
    return _get(client, job_id)


def account(client, name: str, job_ids: list[str], timeout: float = 180) -> dict:
    """Wait for every job, then count; the counts go into the fault matrix."""
    deadline = time.monotonic() + timeout
    jobs = {}
    for job_id in job_ids:
        while True:
            job = _get(client, job_id)
            if job is None or job["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
                jobs[job_id] = job
                break
            time.sleep(0.3)
    finished = [j for j in jobs.values() if j and j["status"] in ("completed", "failed", "cancelled")]
    row = {
        "submitted": len(job_ids),
        "completed": sum(1 for j in finished if j["status"] == "completed"),
        "failed": sum(1 for j in finished if j["status"] == "failed"),
        "lost": len(job_ids) - len(finished),
        "duplicated": sum(1 for j in finished if [a["outcome"] for a in j["attempts"]].count("completed") > 1),
        "attempts": {
            job_id[:8]: [
                (a["outcome"], (a["error"] or {}).get("type"), (a["error"] or {}).get("stage")) for a in j["attempts"]
            ]
            for job_id, j in jobs.items()
            if j
        },
    }
    MATRIX[name] = row
    for job in finished:
        if job["status"] == "completed":
            assert client.get(f"/api/v1/scores/{job['job_id']}").status_code == 200
    return row


def test_pipeline_worker_killed_mid_separation(service, http_server, long_mix):
    import ray

    victim = replica_actor("PipelineWorker")  # looked up before: the kill lands while separation runs
    ids = _submit(service, long_mix, 1, "worker") + _submit(service, http_server.url("mix.wav"), 2, "worker")
    wait_for_stage(str(service.base_url), ids[0], "separation")
    ray.kill(victim, no_restart=False)
    row = account(service, "pipeline worker killed mid-separation", ids)
    assert (row["completed"], row["lost"], row["duplicated"]) == (3, 0, 0), row
    first = row["attempts"][ids[0][:8]]
    assert first[0][0] == "lease_expired" and first[-1][0] == "completed"  # explained in the record


def test_separator_replica_killed_mid_separation(service, http_server, long_mix):
    import ray

    victim = replica_actor("Separator")
    ids = _submit(service, long_mix, 1, "separator") + _submit(service, http_server.url("mix.wav"), 1, "separator")
    wait_for_stage(str(service.base_url), ids[0], "separation")
    ray.kill(victim, no_restart=False)
    row = account(service, "separator replica killed mid-separation", ids)
    assert (row["completed"], row["lost"], row["duplicated"]) == (2, 0, 0), row
    first = row["attempts"][ids[0][:8]]
    assert first[0][0] == "retrying" and first[0][2] == "separation" and first[-1][0] == "completed", first


def test_ledger_killed_with_jobs_in_flight(service, http_server):
    import ray

    ids = _submit(service, http_server.url("mix.wav"), 3, "ledger")
    _until_running(service, ids[0])
    ray.kill(replica_actor("Ledger"), no_restart=False)
    row = account(service, "ledger killed with jobs queued and running", ids)
    assert (row["completed"], row["lost"], row["duplicated"]) == (3, 0, 0), row


def test_whole_app_restarted(service, http_server):
    from ray import serve

    ids = _submit(service, http_server.url("mix.wav"), 3, "restart")
    _until_running(service, ids[0])
    serve.delete("rescored")  # every replica goes, mid-job
    deploy(service.data_dir)  # the same data dir: the same ledger
    row = account(service, "whole app deleted and deployed again", ids)
    assert (row["completed"], row["lost"], row["duplicated"]) == (3, 0, 0), row
    assert row["attempts"][ids[0][:8]][0][0] == "lease_expired"


def _until_the_first_attempt_meets_the_disk(client, job_id, timeout=90):
    """Until the first attempt has ended, or has spent 15 s writing its score (``musicxml``),
    whose files go on the data disk.

    The ledger lives on the same disk and may not be able to record the failure: then the
    lease runs out once the disk is freed, and the timeout bounds the wait.
    """
    deadline = time.monotonic() + timeout
    writing_since = None
    while time.monotonic() < deadline:
        job = _get(client, job_id)
        attempts = job["attempts"] or [{}]
        if job["status"] != "running" or attempts[0].get("outcome"):
            return
        if job["current_stage"] == "musicxml":
            writing_since = writing_since or time.monotonic()
            if time.monotonic() - writing_since > 15:
                return
        time.sleep(0.2)


def test_data_disk_fills_mid_job(service, http_server, data_disk):
    if not data_disk["tmpfs"]:
        pytest.skip("this machine does not allow mounting a tmpfs, so the disk cannot be filled safely")
    ids = _submit(service, http_server.url("mix.wav"), 1, "disk")
    _until_running(service, ids[0])
    ballast = data_disk["path"] / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:  # fill the disk to the last byte (unbuffered: ENOSPC shows up here, not at close)
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    assert shutil.disk_usage(data_disk["path"]).free < 1 << 20
    # The disk stays full until the job has met it: its outputs are written on the data disk
    # (a fixed few seconds were not enough once notation grew slower than the window).
    _until_the_first_attempt_meets_the_disk(service, ids[0])
    assert service.get("/livez").status_code == 200  # the service keeps answering meanwhile
    os.remove(ballast)
    row = account(service, "data disk full mid-job (then freed)", ids)
    assert (row["completed"], row["lost"], row["duplicated"]) == (1, 0, 0), row
    attempts = row["attempts"][ids[0][:8]]
    assert len(attempts) >= 2 and attempts[-1][0] == "completed", attempts  # the full disk cost an attempt
    job = _get(service, ids[0])
    first_error = job["attempts"][0]["error"] or {}
    assert "No space left" in first_error.get("message", "") or job["attempts"][0]["outcome"] == "lease_expired"
