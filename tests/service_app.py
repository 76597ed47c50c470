"""Deploying the service app for a test module (small models, short leases, loopback allowed)."""

from __future__ import annotations

from rescored_ray.service.app import build_app
from rescored_ray.settings import Settings, load_settings, merge

TEST_SERVICE = {
    "worker_slots": 1,
    "lease_s": 3.0,
    "heartbeat_s": 0.5,
    "poll_s": 2.0,
    "soft_time_limit_s": 25.0,
    "hard_time_limit_s": 120.0,
    "backoff_base_s": 0.5,
    "security": {"allow_private_networks": True},
    "limits": {"jobs_per_window": None, "max_active_jobs": None},  # tests submit many jobs from one address
    "separator": {"num_cpus": 0.5},
    "transcriber": {"num_cpus": 0.5},
}
TEST_PIPELINE = {"separation": {"model": "demucs_unittest", "device": "cpu"}}


def deploy(data_dir, pipeline=None, **service) -> Settings:
    """Run the app as "rescored" on "/" of the session's Serve proxy, with the test settings,
    ``service`` and ``pipeline`` laid over them; returns the settings."""
    from ray import serve

    settings = load_settings(
        env={},
        overrides={
            "service": merge({**TEST_SERVICE, "data_dir": str(data_dir)}, service),
            "pipeline": merge(TEST_PIPELINE, pipeline or {}),
        },
    )
    serve.run(build_app(settings, gpus_available=False), name="rescored", route_prefix="/")
    return settings


TERMINAL = {"completed", "failed", "cancelled"}
TERMINAL_MESSAGES = {"completed", "error", "cancelled"}  # a job stream's last message


def wait_for_job(client, job_id, timeout=120, statuses=TERMINAL, predicate=None, poll_s=0.1) -> dict:
    """Poll ``GET /api/v1/jobs/{id}`` (with ``client``'s headers) until the job is in one of
    ``statuses`` (or ``predicate(job)`` holds); returns the job. A job that ends while
    ``predicate`` still fails can never satisfy it: that fails at once, with the job."""
    import time

    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if predicate(job) if predicate else job["status"] in statuses:
            return job
        if predicate and job["status"] in TERMINAL:
            raise AssertionError(f"job {job_id} ended ({job['status']}) before the awaited state: {job}")
        time.sleep(poll_s)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


def wait_for_stage(base_url: str, job_id: str, stage: str, timeout: float = 120.0) -> None:
    """Follow the job's WebSocket until it enters ``stage``: a poll can fall between the start
    and the end of a short stage on a loaded machine, a stream cannot. Fails if the job ends first."""
    import json
    import time

    from websockets.sync.client import connect

    url = base_url.rstrip("/").replace("http://", "ws://", 1) + f"/api/v1/jobs/{job_id}/stream"
    deadline = time.monotonic() + timeout
    with connect(url, open_timeout=30) as ws:
        while True:
            try:
                message = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                raise AssertionError(f"job {job_id} never reached {stage}") from None
            assert message["type"] not in TERMINAL_MESSAGES, f"job {job_id} ended before {stage}: {message}"
            if stage in (message.get("stage"), message.get("current_stage")):
                return


def replica(deployment: str):
    """Ray's state record (name, pid, ...) of the live replica of ``deployment`` in the "rescored" app."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address
    for actor in list_actors(address=address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False):
        if f"rescored#{deployment}#" in (actor.name or ""):
            return actor
    raise AssertionError(f"no live {deployment} replica")


def replica_actor(deployment: str):
    """The live replica of ``deployment`` as a Ray actor handle (to kill it)."""
    import ray

    return ray.get_actor(replica(deployment).name, namespace="serve")
