"""The Ray Serve service against real Ray: every guarantee of the job design it implements
(docs/architecture.md, "the job-processing design"; the list with its tests: docs/guarantees.md).

One Serve app for the module (small models: Demucs' ``demucs_unittest``, real Basic Pitch),
one worker slot, short leases and backoffs so crash and retry paths run in seconds.
"""

import json
import threading
import time

import httpx
import music21
import pytest
from websockets.sync.client import connect as ws_connect

from rescored_ray.precision import resolve_precision
from tests.service_app import deploy, replica_actor, wait_for_job, wait_for_stage

FAST = {"separation": "none", "stems": ["mix"]}


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    data_dir = tmp_path_factory.mktemp("service-data")
    deploy(data_dir)
    port = serve_port
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    client.port = port
    client.data_dir = data_dir
    yield client
    client.close()
    serve.delete("rescored")


def submit(client, url, options=None, priority="default", expect=201):
    response = client.post("/api/v1/transcribe", json={"url": url, "options": options or {}, "priority": priority})
    assert response.status_code == expect, response.text
    return response.json()


def wait_idle(client, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = client.get("/api/v1/queue").json()
        if q["running"] == 0 and not any(q["queued"].values()):
            return
        time.sleep(0.2)
    raise AssertionError(f"queue never drained: {q}")


def test_submit_to_score_with_stems(service, http_server):
    created = submit(service, http_server.url("mix.wav"), {"stems": ["other", "bass"]})
    assert created["status"] == "queued" and created["deduplicated"] is False
    assert created["websocket_url"].endswith(f"/api/v1/jobs/{created['job_id']}/stream")
    job = wait_for_job(service, created["job_id"])
    assert job["status"] == "completed", job
    assert [a["outcome"] for a in job["attempts"]] == ["completed"]
    assert job["result"]["stems"] == ["bass", "drums", "other", "vocals"]
    assert job["result"]["separation_precision"] == resolve_precision("auto", "cpu")
    score = service.get(f"/api/v1/scores/{job['job_id']}")
    assert score.status_code == 200
    assert score.headers["content-type"] == "application/vnd.recordare.musicxml+xml"
    assert "attachment" in score.headers["content-disposition"]
    parsed = music21.converter.parseData(score.text, format="musicxml")
    assert len(parsed.parts) >= 2
    assert service.get(f"/api/v1/scores/{job['job_id']}/midi").content[:4] == b"MThd"
    stem = service.get(f"/api/v1/scores/{job['job_id']}/stems/bass")
    assert stem.status_code == 200 and stem.content[:4] == b"fLaC"
    assert service.get(f"/api/v1/scores/{job['job_id']}/stems/piano").status_code == 404
    assert service.get(f"/api/v1/scores/{job['job_id']}/stems/..%2Fx").status_code in (400, 404)
    assert not list((service.data_dir / "tmp").iterdir()), "temp files outlived the job"


def test_bad_requests_are_400_with_an_error_field(service):
    for body in [
        {},
        {"url": ""},
        {"url": "ftp://x/y"},
        {"url": "https://youtu.be/short"},
        {"url": "http://127.0.0.1/a.mp3", "priority": "urgent"},
        {"url": "http://127.0.0.1/a.mp3", "options": {"separation": "htdemucs_ft"}},
        {"url": "http://127.0.0.1/a.mp3", "options": {"key_override": "H##"}},
        {"url": "http://127.0.0.1/a.mp3", "unknown": 1},
    ]:
        response = service.post("/api/v1/transcribe", json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"] and error["code"] == "invalid_request"
    assert service.get("/api/v1/jobs/nope").status_code == 404
    assert service.get("/healthz").json() == {"status": "ok"}


def test_websocket_streams_ordered_progress_to_completed(service, http_server):
    created = submit(service, http_server.url("delay/2/chorale.flac"), FAST)
    received: dict[int, list[dict]] = {0: [], 1: []}

    def listen(slot: int) -> None:  # several clients may follow one job
        with ws_connect(created["websocket_url"], open_timeout=10) as ws:
            for raw in ws:
                received[slot].append(json.loads(raw))

    listeners = [threading.Thread(target=listen, args=(i,)) for i in received]
    for t in listeners:
        t.start()
    for t in listeners:
        t.join(timeout=120)
    for messages in received.values():
        assert messages[0]["type"] == "state"
        progress = [m for m in messages if m["type"] == "progress"]
        assert progress and [m["progress"] for m in progress] == sorted(m["progress"] for m in progress)
        assert progress[-1]["progress"] == 100
        assert messages[-1]["type"] == "completed" and messages[-1]["result_url"].endswith(created["job_id"])
        stages = [m["stage"] for m in progress]
        assert stages.index("transcription") > stages.index("download")
    # Both see the same ordered stream from the moment each connected.
    a, b = ([m for m in received[i] if m["type"] == "progress"] for i in received)
    shorter, longer = sorted((a, b), key=len)
    assert longer[len(longer) - len(shorter) :] == shorter


def test_high_priority_starts_before_queued_default_jobs(service, http_server):
    wait_idle(service)
    blocker = submit(service, http_server.url("delay/3/chorale.mp3"), FAST)
    wait_for_job(service, blocker["job_id"], predicate=lambda j: j["status"] == "running")
    a = submit(service, http_server.url("chorale.ogg"), FAST)
    b = submit(service, http_server.url("chorale.opus"), FAST)
    c = submit(service, http_server.url("chorale.m4a"), FAST, priority="high")
    jobs = {name: wait_for_job(service, j["job_id"]) for name, j in {"a": a, "b": b, "c": c}.items()}
    assert all(j["status"] == "completed" for j in jobs.values())
    started = sorted(jobs, key=lambda name: jobs[name]["started_at"])
    assert started == ["c", "a", "b"]


def test_duplicates_join_the_existing_job(service, http_server):
    first = submit(service, http_server.url("chorale.mp3") + "?dup=1", FAST)
    again = submit(service, http_server.url("chorale.mp3") + "?dup=1", {"stems": ["mix"], "separation": "none"})
    assert again["job_id"] == first["job_id"] and again["deduplicated"] is True
    other = submit(service, http_server.url("chorale.mp3") + "?dup=1", {**FAST, "tempo_override": 90})
    assert other["job_id"] != first["job_id"] and other["deduplicated"] is False
    wait_for_job(service, first["job_id"])
    assert submit(service, http_server.url("chorale.mp3") + "?dup=1", FAST)["job_id"] == first["job_id"]
    wait_for_job(service, other["job_id"])


def test_permanent_error_fails_once(service, http_server):
    job = wait_for_job(service, submit(service, http_server.url("page.html"), FAST)["job_id"])
    assert job["status"] == "failed" and len(job["attempts"]) == 1
    assert job["error"]["retryable"] is False and job["error"]["stage"] == "download"
    assert "no media found" in job["error"]["message"]


def test_transient_error_retries_with_exponential_backoff(service, http_server):
    job = wait_for_job(service, submit(service, http_server.url("status/503/song.mp3"), FAST)["job_id"], timeout=60)
    assert job["status"] == "failed" and job["error"]["retryable"] is True
    attempts = job["attempts"]
    assert len(attempts) == 4 and [a["outcome"] for a in attempts] == ["retrying"] * 3 + ["failed"]
    gaps = [attempts[i + 1]["started_at"] - attempts[i]["ended_at"] for i in range(3)]
    for gap, expected in zip(gaps, [0.5, 1.0, 2.0], strict=False):  # backoff_base_s 0.5: 1x, 2x, 4x
        assert gap >= expected - 0.05, gaps
    assert all(a["error"]["stage"] == "download" for a in attempts)


def test_cancel_queued_at_once_and_running_at_next_stage(service, http_server):
    wait_idle(service)
    running = submit(service, http_server.url("delay/3/chorale.mp3") + "?c=1", FAST)
    wait_for_job(service, running["job_id"], predicate=lambda j: j["status"] == "running")
    queued = submit(service, http_server.url("chorale.mp3") + "?c=2", FAST)
    assert service.delete(f"/api/v1/jobs/{queued['job_id']}").json()["status"] == "cancelled"
    reply = service.delete(f"/api/v1/jobs/{running['job_id']}").json()
    assert reply["status"] == "running" and reply["cancel_requested"] is True
    job = wait_for_job(service, running["job_id"])
    assert job["status"] == "cancelled" and job["progress"] < 50
    assert service.get(f"/api/v1/scores/{running['job_id']}").status_code == 404
    assert service.get(f"/api/v1/jobs/{queued['job_id']}").json()["started_at"] is None


def test_soft_time_limit_stops_the_attempt_and_retries(service, http_server):
    wait_idle(service)
    created = submit(service, http_server.url("delay/26/chorale.mp3"), FAST)
    job = wait_for_job(
        service,
        created["job_id"],
        timeout=60,
        predicate=lambda j: bool(j["attempts"]) and j["attempts"][0]["outcome"] == "retrying",
    )
    first = job["attempts"][0]
    assert first["error"]["type"] == "TimeLimitExceeded" and first["error"]["retryable"] is True
    assert "soft time limit" in first["error"]["message"]
    service.delete(f"/api/v1/jobs/{created['job_id']}")
    assert wait_for_job(service, created["job_id"], timeout=60)["status"] == "cancelled"


def test_job_survives_its_worker_dying_mid_separation(service, long_mix):
    import ray

    wait_idle(service)
    victim = replica_actor("PipelineWorker")  # looked up first: the kill lands the moment separation starts
    created = submit(service, long_mix + "?crash=1", {"stems": ["other"]})
    wait_for_stage(str(service.base_url), created["job_id"], "separation")  # a poll can miss it
    ray.kill(victim, no_restart=False)
    job = wait_for_job(service, created["job_id"], timeout=180)
    assert job["status"] == "completed", job
    outcomes = [a["outcome"] for a in job["attempts"]]
    assert outcomes == ["lease_expired", "completed"], outcomes
    assert job["attempts"][0]["stage"] == "separation", job["attempts"]
    assert job["attempts"][0]["worker"] != job["attempts"][1]["worker"]
    assert service.get(f"/api/v1/scores/{created['job_id']}").status_code == 200


def test_ledger_restart_keeps_every_job(service, http_server):
    import ray

    wait_idle(service)
    done = submit(service, http_server.url("chorale.mp3") + "?l=1", FAST)
    wait_for_job(service, done["job_id"])
    blocker = submit(service, http_server.url("delay/4/chorale.mp3") + "?l=2", FAST)
    queued = submit(service, http_server.url("chorale.mp3") + "?l=3", FAST)
    before = {j: service.get(f"/api/v1/jobs/{j}").json()["status"] for j in (done["job_id"], queued["job_id"])}
    ray.kill(replica_actor("Ledger"), no_restart=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if service.get("/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    assert service.get(f"/api/v1/jobs/{done['job_id']}").json()["status"] == before[done["job_id"]] == "completed"
    assert wait_for_job(service, queued["job_id"], timeout=120)["status"] == "completed"
    assert wait_for_job(service, blocker["job_id"], timeout=120)["status"] == "completed"


def test_fifty_concurrent_submissions_all_accounted_for(service, http_server):
    wait_idle(service)
    # The one worker slot is busy (a download that stalls 20 s) while the burst arrives and is
    # cancelled: every one of the fifty is still queued when its cancel lands, however slow the machine.
    blocker = submit(service, http_server.url("delay/20/chorale.mp3") + "?burst=blocker", FAST)
    wait_for_job(service, blocker["job_id"], statuses=("running",), timeout=60)
    results, errors = [], []

    def one(i):
        try:
            with httpx.Client(base_url=str(service.base_url), timeout=60) as c:
                r = c.post(
                    "/api/v1/transcribe", json={"url": http_server.url("chorale.mp3") + f"?burst={i}", "options": FAST}
                )
                results.append((i, r.status_code, r.json()))
        except Exception as exc:
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 50
    assert all(status == 201 for _, status, _ in results)
    ids = {body["job_id"] for _, _, body in results}
    assert len(ids) == 50
    for job_id in ids:
        assert service.get(f"/api/v1/jobs/{job_id}").json()["status"] in ("queued", "running", "completed")
        service.delete(f"/api/v1/jobs/{job_id}")
    statuses = [wait_for_job(service, job_id, timeout=120)["status"] for job_id in ids]
    assert set(statuses) <= {"cancelled", "completed"} and statuses.count("cancelled") >= 45
    service.delete(f"/api/v1/jobs/{blocker['job_id']}")
    assert wait_for_job(service, blocker["job_id"], timeout=60)["status"] in ("cancelled", "completed")
