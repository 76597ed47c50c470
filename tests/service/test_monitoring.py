"""Monitoring against real Ray: our metrics through Ray's metrics agent, per-job timelines,
structured logs in the Serve replicas' own log files.

One Serve app (small models) and one set of jobs for the module: a separated job, the same
job again (deduplicated), a permanent failure (HTTP 404) and a transient one (HTTP 503 once,
then the file). Every check below reads what real Ray exported or wrote.
"""

from __future__ import annotations

import glob
import json
import os
import time

import httpx
import pytest

from rescored_ray.metrics import METRICS
from rescored_ray.precision import resolve_precision
from tests.metrics_scrape import deltas_when_settled, scrape, value
from tests.service_app import deploy, wait_for_job


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    deploy(tmp_path_factory.mktemp("monitoring-data"), max_retries=2)
    client = httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=30)
    yield client
    client.close()
    serve.delete("rescored")


@pytest.fixture(scope="module")
def jobs(service, http_server):
    """Four submissions, all finished, with the metrics scraped before and after."""
    http_server.clear_log()
    # the flaky file gets its own query so its 503 counter is this module's alone
    flaky_url = http_server.url("flaky/1/chorale.mp3") + "?monitoring=1"
    before = scrape()

    def submit(url, options=None, priority="default"):
        response = service.post("/api/v1/transcribe", json={"url": url, "options": options or {}, "priority": priority})
        assert response.status_code == 201, response.text
        return response.json()

    separated = submit(http_server.url("chorale.flac"), {"stems": ["other", "bass"]}, priority="high")
    again = submit(http_server.url("chorale.flac"), {"stems": ["bass", "other"]}, priority="high")
    missing = submit(http_server.url("status/404/gone.mp3"), {"separation": "none", "stems": ["mix"]})
    flaky = submit(flaky_url, {"separation": "none", "stems": ["mix"]})
    finished = {
        name: wait_for_job(service, created["job_id"], timeout=180)
        for name, created in {"separated": separated, "missing": missing, "flaky": flaky}.items()
    }
    assert again["deduplicated"] and again["job_id"] == separated["job_id"]
    return {"before": before, "jobs": finished}


def test_jobs_end_as_expected(jobs):
    finished = jobs["jobs"]
    assert finished["separated"]["status"] == "completed"
    assert finished["flaky"]["status"] == "completed" and len(finished["flaky"]["attempts"]) == 2
    assert finished["missing"]["status"] == "failed"
    assert finished["missing"]["error"]["stage"] == "download" and finished["missing"]["error"]["retryable"] is False


def test_metrics_agent_exports_our_series_with_the_right_counts(jobs):
    finished = jobs["jobs"]
    before = jobs["before"]
    audio_s = finished["separated"]["result"]["duration_s"] + finished["flaky"]["result"]["duration_s"]
    expected = {
        ("rescored_jobs_submitted_total", (("priority", "high"), ("deduplicated", "false"))): 1,
        ("rescored_jobs_submitted_total", (("priority", "high"), ("deduplicated", "true"))): 1,
        ("rescored_jobs_submitted_total", (("priority", "default"), ("deduplicated", "false"))): 2,
        ("rescored_jobs_completed_total", (("priority", "high"),)): 1,
        ("rescored_jobs_completed_total", (("priority", "default"),)): 1,
        ("rescored_jobs_failed_total", (("stage", "download"), ("retryable", "false"))): 1,
        ("rescored_job_retries_total", (("stage", "download"), ("reason", "error"))): 1,
        ("rescored_stage_seconds_count", (("stage", "separation"), ("path", "service"), ("ok", "true"))): 1,
        ("rescored_stage_seconds_count", (("stage", "transcription"), ("path", "service"), ("ok", "true"))): 2,
        ("rescored_stage_seconds_count", (("stage", "download"), ("path", "service"), ("ok", "false"))): 2,
        ("rescored_stage_seconds_count", (("stage", "notation"), ("path", "service"), ("ok", "true"))): 2,
        ("rescored_job_seconds_count", ()): 2,
        ("rescored_queue_wait_seconds_count", ()): 3,
        ("rescored_audio_seconds_total", (("path", "service"),)): audio_s,
    }
    deltas, after = deltas_when_settled(before, expected)
    assert deltas == pytest.approx(expected, abs=0.01)
    # model load times, from the model replicas
    assert value(after, "rescored_model_load_seconds", model="basic-pitch") > 0
    assert value(after, "rescored_model_load_seconds", model="demucs_unittest") > 0


def test_queue_and_worker_gauges_settle(jobs):
    deadline = time.monotonic() + 30
    while True:
        samples = scrape()
        state = (
            value(samples, "rescored_queue_depth", priority="high"),
            value(samples, "rescored_queue_depth", priority="default"),
            value(samples, "rescored_jobs_running"),
            value(samples, "rescored_worker_slots", state="idle"),
            value(samples, "rescored_worker_slots", state="busy"),
        )
        if state == (0, 0, 0, 1, 0) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert state == (0, 0, 0, 1, 0)  # drained, one worker slot (TEST_SETTINGS) idle
    series = {name for name, _ in samples}
    assert {"rescored_queue_depth", "rescored_jobs_running", "rescored_worker_slots"} <= series
    assert series <= set(METRICS) | {f"{n}_{s}" for n in METRICS for s in ("bucket", "count", "sum")}


def test_queue_endpoint_lists_worker_slots(service, jobs):
    queue = service.get("/api/v1/queue").json()
    assert len(queue["workers"]) == 1
    worker = queue["workers"][0]
    assert worker["busy"] is False and worker["job_id"] is None and worker["worker_id"].startswith("worker-")


def test_timeline_says_when_and_where_each_stage_ran(service, jobs):
    job = service.get(f"/api/v1/jobs/{jobs['jobs']['separated']['job_id']}").json()
    stages = [span["stage"] for span in job["timeline"]]
    assert stages == ["queued", "download", "decode", "separation", "transcription", "notation", "outputs", "upload"]
    assert all(span["attempt"] == 1 and span["ok"] for span in job["timeline"])
    for earlier, later in zip(job["timeline"], job["timeline"][1:], strict=False):
        assert earlier["ended_at"] <= later["started_at"]  # ISO strings of one zone sort as times
    by_stage = {span["stage"]: span for span in job["timeline"]}
    assert all(w["actor"].startswith("SERVE_REPLICA::rescored#PipelineWorker") for w in by_stage["download"]["workers"])
    separation = by_stage["separation"]["workers"]
    assert len(separation) == 1 and "Separator" in separation[0]["actor"] and separation[0]["device"] == "cpu"
    assert separation[0]["precision"] == resolve_precision("auto", "cpu")  # the job timeline says what auto chose
    transcription = by_stage["transcription"]["workers"]
    assert sorted(w["stem"] for w in transcription) == ["bass", "other"]
    assert all("Transcriber" in w["actor"] and w["device"] == "CPUExecutionProvider" for w in transcription)
    assert by_stage["separation"]["seconds"] > 0
    assert sum(span["seconds"] for span in job["timeline"][1:]) <= (
        (_ts(job["completed_at"]) - _ts(job["started_at"])) + 0.05
    )


def test_timeline_of_a_retried_job_keeps_the_failed_attempt(service, jobs):
    job = service.get(f"/api/v1/jobs/{jobs['jobs']['flaky']['job_id']}").json()
    first = [span for span in job["timeline"] if span["attempt"] == 1]
    second = [span for span in job["timeline"] if span["attempt"] == 2]
    assert [s["stage"] for s in first] == ["queued", "download"] and first[1]["ok"] is False
    assert second[0]["stage"] == "queued" and second[0]["seconds"] >= 0.4  # the backoff (base 0.5 s)
    assert second[-1]["stage"] == "upload" and all(s["ok"] for s in second)


def _ts(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


def _replica_log_lines(deployment: str) -> list[dict]:
    import ray

    logs_dir = ray._private.worker._global_node.get_logs_dir_path()  # type: ignore[attr-defined]
    lines = []
    for path in glob.glob(os.path.join(logs_dir, "serve", f"replica_rescored_{deployment}_*.log")):
        with open(path) as handle:
            for line in handle:
                if line.startswith("{"):
                    lines.append(json.loads(line))
    return lines


def test_job_log_lines_carry_job_id_and_stage(jobs):
    job_ids = {name: job["job_id"] for name, job in jobs["jobs"].items()}
    deadline = time.monotonic() + 15  # Serve buffers replica logs briefly
    while True:
        lines = _replica_log_lines("PipelineWorker")
        ours = {
            name: [line for line in lines if line.get("rescored_job_id") == job_id] for name, job_id in job_ids.items()
        }
        if all(ours.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    separated = ours["separated"]
    stages = {line.get("rescored_stage") for line in separated}
    assert {"download", "decode", "separation", "transcription", "notation", "outputs", "upload"} <= stages
    assert any("separation done" in line["message"] and "Separator" in line["message"] for line in separated)
    assert any(line["message"].startswith(f"job {job_ids['separated']} completed") for line in separated)
    # a permanent failure: one warning line with the stage, and no traceback (it is not a bug)
    failed = [line for line in ours["missing"] if "attempt failed" in line["message"]]
    assert len(failed) == 1 and failed[0]["rescored_stage"] == "download" and failed[0]["levelname"] == "WARNING"
    assert not any("exc_text" in line for line in ours["missing"])
    # the ledger's record of the failure carries the job too
    ledger = [line for line in _replica_log_lines("Ledger") if line.get("rescored_job_id") == job_ids["missing"]]
    assert ledger and ledger[0]["rescored_stage"] == "download"
