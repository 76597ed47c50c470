"""The service on the Redis ledger with results on S3 (``service.ledger: redis://...``,
``storage_uri: s3://...``), against real Ray, a real ``redis-server`` and moto's S3-API server.

One Serve app for the module: two ingress replicas that talk to Redis themselves (no Ledger
actor on the path), WebSockets streamed from ``job:{id}:updates``, results uploaded to and
served from the bucket, expiry deleting them there. The module owns its ``redis-server`` so
that it may kill it with -9 and restart it from its AOF.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.redis_server import RedisServer
from tests.service_app import deploy, wait_for_job

FAST = {"separation": "none", "stems": ["mix"]}


@pytest.fixture(scope="module")
def redis_ledger(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("svc-redis"), appendfsync="always").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory, redis_ledger, s3_server):
    from ray import serve

    prefix = f"svc-{uuid.uuid4().hex[:6]}:"
    results = s3_server.uri("service", f"results-{prefix[:-1]}")
    deploy(
        tmp_path_factory.mktemp("redis-service-data"),
        ledger=redis_ledger.url(1),
        ledger_prefix=prefix,
        storage_uri=results,
        ingress_replicas=2,
        result_ttl_s=12.0,
        expiry_sweep_s=1.0,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=30)
    client.prefix = prefix
    client.bucket_root = f"service/results-{prefix[:-1]}"
    yield client
    client.close()
    serve.delete("rescored")


def _redis(server, db=1):
    import redis

    return redis.Redis.from_url(server.url(db), decode_responses=True)


def submit(client, url, options=None, expect=201):
    response = client.post("/api/v1/transcribe", json={"url": url, "options": options or FAST})
    assert response.status_code == expect, response.text
    return response.json()


def _ingress_replicas() -> int:
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address
    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    return sum(1 for a in actors if "rescored#Ingress#" in (a.name or ""))


def test_job_on_redis_streams_to_every_listener_results_on_s3_then_expire(
    service, http_server, redis_ledger, s3_server
):
    import pyarrow.fs as pafs

    assert _ingress_replicas() == 2
    created = submit(service, http_server.url("delay/2/chorale.flac"))
    received: dict[int, list[dict]] = {0: [], 1: [], 2: []}

    def listen(slot: int) -> None:  # the proxy spreads these over both ingress replicas
        with ws_connect(created["websocket_url"], open_timeout=10) as ws:
            for raw in ws:
                received[slot].append(json.loads(raw))

    listeners = [threading.Thread(target=listen, args=(i,)) for i in received]
    for t in listeners:
        t.start()
    for t in listeners:
        t.join(timeout=120)
    job_id = created["job_id"]
    job = wait_for_job(service, job_id, timeout=10)
    assert [a["outcome"] for a in job["attempts"]] == ["completed"], job
    for messages in received.values():
        assert messages[0]["type"] == "state"
        progress = [m["progress"] for m in messages if m["type"] == "progress"]
        assert progress == sorted(progress) and progress[-1] == 100, messages
        assert messages[-1]["type"] == "completed" and messages[-1]["result_url"].endswith(job_id)
    # the record is the design's job:{id} hash; the score is read back from the bucket
    assert _redis(redis_ledger).hget(f"{service.prefix}job:{job_id}", "status") == "completed"
    score = service.get(f"/api/v1/scores/{job_id}")
    assert score.status_code == 200 and b"score-partwise" in score.content
    assert service.get(f"/api/v1/scores/{job_id}/midi").content[:4] == b"MThd"
    bucket = s3_server.filesystem()
    folder = f"{service.bucket_root}/{job_id}"
    assert bucket.get_file_info(f"{folder}/score.musicxml").type == pafs.FileType.File
    queue = service.get("/api/v1/queue").json()
    assert queue["completed"] >= 1 and [w["busy"] for w in queue["workers"]] == [False]
    # expiry: the record leaves Redis and the files leave the bucket
    deadline = time.monotonic() + 60
    while service.get(f"/api/v1/jobs/{job_id}").status_code != 404:
        assert time.monotonic() < deadline, "the completed job never expired"
        time.sleep(0.5)
    assert not _redis(redis_ledger).exists(f"{service.prefix}job:{job_id}")
    # the sweep deletes the record, then the files: they follow within moments
    while bucket.get_file_info(folder).type != pafs.FileType.NotFound:
        assert time.monotonic() < deadline + 10, "expired results stayed in the bucket"
        time.sleep(0.2)
    assert service.get(f"/api/v1/scores/{job_id}").status_code == 404


def test_redis_kill9_with_jobs_queued_and_running_then_aof_restart(service, http_server, redis_ledger):
    running = submit(service, http_server.url("delay/3/chorale.mp3") + "?r=1")
    wait_for_job(service, running["job_id"], predicate=lambda j: j["status"] == "running")
    queued = [submit(service, http_server.url("chorale.ogg") + f"?q={i}") for i in range(3)]
    redis_ledger.kill9()
    # the service answers, but not with made-up data: a 5xx while its store is down
    down = service.get(f"/api/v1/jobs/{running['job_id']}")
    assert down.status_code >= 500
    time.sleep(1.0)
    redis_ledger.start()  # same port, same folder: it replays the AOF (appendfsync always)
    # each job's event log is read the moment the job ends: results here expire after 12 s
    pending, ended = [j["job_id"] for j in [running, *queued]], {}
    deadline = time.monotonic() + 180
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = service.get(f"/api/v1/jobs/{job_id}").json()
            if job["status"] in ("completed", "failed", "cancelled"):
                log = _redis(redis_ledger).lrange(f"{service.prefix}job:{job_id}:events", 0, -1)
                ended[job_id] = (job, [json.loads(e)["type"] for e in log])
                pending.remove(job_id)
        time.sleep(0.1)
    assert not pending, f"jobs that never ended: {pending}"
    for job, types in ended.values():  # one completion each, whatever the workers saw while Redis was gone
        assert job["status"] == "completed", job
        outcomes = [a["outcome"] for a in job["attempts"]]
        assert outcomes.count("completed") == 1 and outcomes[-1] == "completed", outcomes
        assert types.count("completed") == 1, types
    assert service.get("/healthz").json() == {"status": "ok"}
