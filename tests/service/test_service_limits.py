"""Limits against real Ray Serve: result expiry, and the hard time limit.

A separate app with short limits. Results expire after 10 s and the sweep deletes the
record and its files. A job whose download stalls for 60 s holds its worker past the
8 s hard limit: the worker fails its health check, Serve replaces it, and the job's
lease expires so another worker takes it (then it is cancelled).
"""

import time
from pathlib import Path

import httpx
import pytest
import yaml

from rescored_ray.service.app import app_builder, build_app
from rescored_ray.settings import load_settings

REPO_CONFIG = "configs/serve.yaml"


@pytest.fixture(scope="module")
def limited(serve_port, tmp_path_factory):
    from ray import serve

    config = load_settings(
        env={},
        overrides={
            "service": {
                "data_dir": str(tmp_path_factory.mktemp("limits-data")),
                "lease_s": 3.0,
                "heartbeat_s": 0.5,
                "poll_s": 2.0,
                "soft_time_limit_s": 100.0,
                "hard_time_limit_s": 8.0,
                "result_ttl_s": 10.0,  # long enough for a loaded machine's reads before it
                "failed_ttl_s": 10.0,
                "expiry_sweep_s": 1.0,
                "security": {"allow_private_networks": True},
                "limits": {"jobs_per_window": None, "max_active_jobs": None},
                "transcriber": {"num_cpus": 0.5},
            },
            "pipeline": {
                "separation": {"model": "none"},
                "transcription": {"stems": ["mix"]},
                "source": {"socket_timeout_s": 90.0},  # the stalled download stalls, it does not time out
            },
        },
    )
    port = serve_port
    serve.run(build_app(config, gpus_available=False), name="rescored", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        client.results = config.service.data_path / "results"
        yield client
    serve.delete("rescored")


def test_results_expire_and_their_files_are_deleted(limited, http_server):
    created = limited.post("/api/v1/transcribe", json={"url": http_server.url("chorale.mp3")}).json()
    deadline = time.monotonic() + 60
    while limited.get(f"/api/v1/jobs/{created['job_id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline, "job did not complete"
        time.sleep(0.2)
    assert limited.get(f"/api/v1/scores/{created['job_id']}").status_code == 200
    assert (limited.results / created["job_id"] / "score.musicxml").is_file()
    while limited.get(f"/api/v1/jobs/{created['job_id']}").status_code != 404:
        assert time.monotonic() < deadline, "completed job never expired"
        time.sleep(0.5)
    while (limited.results / created["job_id"]).exists():  # the sweep deletes the record, then the files
        assert time.monotonic() < deadline + 10, "expired result files were not deleted"
        time.sleep(0.2)
    assert limited.get(f"/api/v1/scores/{created['job_id']}").status_code == 404


def test_worker_past_the_hard_limit_is_replaced_and_the_job_requeued(limited, http_server):
    created = limited.post("/api/v1/transcribe", json={"url": http_server.url("delay/60/chorale.mp3")}).json()
    deadline = time.monotonic() + 90
    job = {}
    while time.monotonic() < deadline:
        job = limited.get(f"/api/v1/jobs/{created['job_id']}").json()
        if len(job["attempts"]) >= 2:
            break
        time.sleep(0.2)
    first, second = job["attempts"][:2]
    assert first["outcome"] == "lease_expired", job["attempts"]
    assert first["worker"] != second["worker"], "the stuck worker was not replaced"
    # Replaced after the 8 s limit (health checks every 2 s, 3 failures, a graceful stop, a 3 s
    # lease, a new replica's start-up and warm-up), long before the download's 60 s.
    assert second["started_at"] - first["started_at"] < 45
    limited.delete(f"/api/v1/jobs/{created['job_id']}")
    while time.monotonic() < deadline + 60:
        if limited.get(f"/api/v1/jobs/{created['job_id']}").json()["status"] == "cancelled":
            break
        time.sleep(0.5)
    assert limited.get(f"/api/v1/jobs/{created['job_id']}").json()["status"] == "cancelled"
    assert limited.get("/healthz").status_code == 200


def test_serve_yaml_is_a_valid_serve_config_and_env_overrides_it(monkeypatch):
    document = yaml.safe_load(Path(REPO_CONFIG).read_text())
    app = document["applications"][0]
    assert app["import_path"] == "rescored_ray.service.app:app_builder"
    monkeypatch.setenv("RESCORED_PIPELINE__SEPARATION__MODEL", "demucs_unittest")
    monkeypatch.setenv("RESCORED_SERVICE__DATA_DIR", "/tmp/rescored-env-test")
    cfg = load_settings(document=app["args"])
    assert cfg.pipeline.separation.model == "demucs_unittest" and cfg.service.data_dir == "/tmp/rescored-env-test"
    service = cfg.service
    assert service.separator.max_replicas == 2 and service.worker_slots == 2
    assert service.separator.gpus("separator", True) == 0.5 and service.transcriber.gpus("transcriber", True) == 0.25
    assert service.separator.gpus("separator", False) == 0.0
    assert app_builder(app["args"]) is not None
