"""Settings of the Ray Serve service: data dir, worker slots, time limits, deployments.

The pipeline's own settings (:class:`~rescored_ray.config.PipelineConfig`) sit under
``pipeline:``; the service adds what only a long-running, multi-user process needs.
Environment variables override both: ``RESCORED_DATA_DIR``, ``RESCORED_WORKER_SLOTS``,
``RESCORED_ALLOW_PRIVATE_NETWORKS=1`` for the service, ``RESCORED_SEPARATION_MODEL``
and friends for the pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rescored_ray.config import PipelineConfig, _deep_merge, env_overrides, gpu_share, read_yaml_mapping
from rescored_ray.netguard import networks


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentOptions(_Section):
    """Resources and autoscaling of one model deployment."""

    num_gpus: float | None = Field(None, ge=0, description="None = the default share when GPUs exist, else 0.")
    num_cpus: float = Field(1.0, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(1.0, gt=0)
    max_ongoing_requests: int = Field(4, ge=1)


class SecurityConfig(_Section):
    allow_private_networks: bool = Field(False, description="Accept loopback/private-range URLs (tests, intranets).")
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs reachable even though not public (an intranet media server), e.g. ['10.20.0.0/16'].")

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        networks(value)  # a bad CIDR is a config error at start-up, not a surprise per request
        return value

    api_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="Client name -> bearer token. When set, every /api/v1 call needs a token, and a client "
                    "sees only its own jobs. Env: RESCORED_API_TOKENS='{alice: token1, bob: token2}'.")

    @property
    def networks(self):
        return networks(self.allowed_networks)

    @field_validator("api_tokens")
    @classmethod
    def _tokens(cls, value: dict[str, str]) -> dict[str, str]:
        short = [name for name, token in value.items() if len(str(token)) < 16]
        if short:
            raise ValueError(f"API tokens must be at least 16 characters (clients {short})")
        if len(set(value.values())) != len(value):
            raise ValueError("two clients share one API token")
        return value


class LimitsConfig(_Section):
    """Per-client limits (a client: its API token's name, else its address). null switches one off."""

    jobs_per_window: int | None = Field(10, ge=1, description="New jobs per client per window (429 beyond).")
    window_s: float = Field(3600.0, gt=0)
    max_active_jobs: int | None = Field(4, ge=1, description="Jobs of one client queued or running at once.")
    max_body_bytes: int = Field(16 * 1024, ge=256, description="Largest request body (413 beyond).")


class ServiceConfig(_Section):
    """Everything ``rescored-ray serve`` needs; one file, ``configs/serve.yaml``."""

    data_dir: str = Field("~/.rescored", description="Ledger database, temp dirs and (by default) results.")
    storage_uri: str | None = Field(None, description="pyarrow.fs URI for results; default <data_dir>/results.")
    worker_slots: int = Field(1, ge=1, description="Jobs running at once; each slot runs one job at a time.")
    worker_num_cpus: float = Field(0.5, ge=0)
    lease_s: float = Field(30.0, gt=0, description="A job whose worker misses heartbeats this long is re-queued.")
    heartbeat_s: float = Field(5.0, gt=0)
    poll_s: float = Field(5.0, gt=0, description="Longest an idle worker's lease request waits in the ledger; "
                                                 "it returns the moment a job is queued.")
    soft_time_limit_s: float = Field(540.0, gt=0)
    hard_time_limit_s: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(600.0, ge=0)
    result_ttl_s: float = Field(30 * 86400.0, gt=0)
    failed_ttl_s: float = Field(86400.0, gt=0)
    expiry_sweep_s: float = Field(300.0, gt=0)
    metrics_interval_s: float = Field(2.0, gt=0, description="How often queue depth and worker gauges are set.")
    log_encoding: str = Field("JSON", pattern="^(JSON|TEXT)$",
                              description="Serve log format; JSON carries rescored_job_id/rescored_stage fields.")
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    separator: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_gpus=None))
    transcriber: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions(num_gpus=None))
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def results_uri(self) -> str:
        return self.storage_uri or str(self.data_path / "results")

    def gpus_for(self, name: str, gpus_available: bool) -> float:
        """The deployment's GPU share: configured, else 0.5 (Demucs) / 0.25 (Basic Pitch) on GPU nodes."""
        return gpu_share(name, getattr(self, name).num_gpus, gpus_available)


SERVICE_ENV = {
    "RESCORED_DATA_DIR": ("data_dir",),
    "RESCORED_STORAGE_URI": ("storage_uri",),
    "RESCORED_WORKER_SLOTS": ("worker_slots",),
    "RESCORED_ALLOW_PRIVATE_NETWORKS": ("security", "allow_private_networks"),
    "RESCORED_SOFT_TIME_LIMIT_S": ("soft_time_limit_s",),
    "RESCORED_HARD_TIME_LIMIT_S": ("hard_time_limit_s",),
    "RESCORED_API_TOKENS": ("security", "api_tokens"),
    "RESCORED_RATE_LIMIT_JOBS": ("limits", "jobs_per_window"),
}


def service_section(document: Mapping[str, Any]) -> dict:
    """Our settings inside a Serve config file (``applications[0].args.rescored``),
    or a plain settings mapping (optionally under ``rescored:``)."""
    if not isinstance(document, Mapping):
        raise ValueError("service config must be a mapping")
    if "applications" in document:
        for application in document["applications"] or []:
            args = application.get("args") or {}
            if "rescored" in args:
                return dict(args["rescored"] or {})
        return {}
    return dict(document.get("rescored", document))


def http_options(path: str | os.PathLike | None) -> dict:
    """``http_options`` of a Serve config file (host/port), if it has any."""
    if path is None:
        return {}
    document = yaml.safe_load(Path(path).read_text()) or {}
    return dict(document.get("http_options") or {}) if isinstance(document, Mapping) else {}


def load_service_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    document: Mapping[str, Any] | None = None,
) -> ServiceConfig:
    """Defaults, then the YAML file (or an already-parsed ``document``), then environment
    variables, then ``overrides``."""
    env = os.environ if env is None else env
    data: dict = service_section(document) if document is not None else {}
    if path is not None:
        data = service_section(read_yaml_mapping(path))
    from_env: dict = {"pipeline": env_overrides(env)}
    for name, field_path in SERVICE_ENV.items():
        if name in env:
            node = from_env
            for part in field_path[:-1]:
                node = node.setdefault(part, {})
            node[field_path[-1]] = yaml.safe_load(env[name]) if env[name] != "" else None
    data = _deep_merge(data, from_env)
    if overrides:
        data = _deep_merge(data, overrides)
    return ServiceConfig.model_validate(data)
