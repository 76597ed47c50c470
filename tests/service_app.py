"""Deploying the service app for a test module (small models, short leases, loopback allowed)."""

from __future__ import annotations

from rescored_ray.config import _deep_merge
from rescored_ray.service.app import build_app
from rescored_ray.service.config import load_service_config

TEST_SETTINGS = {
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
    "pipeline": {"separation": {"model": "demucs_unittest", "device": "cpu"}},
}


def deploy(data_dir, **overrides):
    """Run the app as "rescored" on "/" of the session's Serve proxy; returns its config."""
    from ray import serve

    config = load_service_config(env={}, overrides=_deep_merge({**TEST_SETTINGS, "data_dir": str(data_dir)}, overrides))
    serve.run(build_app(config, gpus_available=False), name="rescored", route_prefix="/")
    return config
