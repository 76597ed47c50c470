"""The service's settings (the ``service`` section of :class:`~rescored_ray.settings.Settings`).

What only a long-running, multi-user process needs: data dir, worker slots, time limits,
security, limits and the model deployments' resources. The pipeline's settings are the
root's ``pipeline`` section; files and ``RESCORED_SERVICE__<FIELD>`` variables override
both (:mod:`rescored_ray.settings`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from rescored_ray.config import ModelResources, Section
from rescored_ray.netguard import Network, networks


class DeploymentOptions(ModelResources):
    """Resources and autoscaling of one model deployment."""

    num_cpus: float = Field(1.0, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(1.0, gt=0)
    max_ongoing_requests: int = Field(4, ge=1)


class SecurityConfig(Section):
    allow_private_networks: bool = Field(False, description="Accept loopback/private-range URLs (tests, intranets).")
    allowed_networks: list[str] = Field(
        default_factory=list,
        description="CIDRs reachable even though not public (an intranet media server), e.g. ['10.20.0.0/16'].",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        networks(value)  # a bad CIDR is a config error at start-up, not a surprise per request
        return value

    api_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="Client name -> bearer token. When set, every /api/v1 call needs a token, and a client "
        "sees only its own jobs. Env: RESCORED_SERVICE__SECURITY__API_TOKENS='{alice: token1, bob: token2}'.",
    )

    @property
    def networks(self) -> tuple[Network, ...]:
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


class LimitsConfig(Section):
    """Per-client limits (a client: its API token's name, else its address). null switches one off."""

    jobs_per_window: int | None = Field(10, ge=1, description="New jobs per client per window (429 beyond).")
    window_s: float = Field(3600.0, gt=0)
    max_active_jobs: int | None = Field(4, ge=1, description="Jobs of one client queued or running at once.")
    max_body_bytes: int = Field(16 * 1024, ge=256, description="Largest request body (413 beyond).")


class ServiceConfig(Section):
    """Everything ``rescored-ray serve`` needs; one file, ``configs/serve.yaml``."""

    data_dir: str = Field("~/.rescored", description="Ledger database, temp dirs and (by default) results.")
    ledger: str | None = Field(
        None,
        description="The job store: sqlite:///PATH (default <data_dir>/ledger.sqlite3; one node) or "
        "redis://HOST:PORT/DB (every replica talks to Redis; a service across nodes). "
        "CLI: rescored-ray serve --ledger URL; env: RESCORED_SERVICE__LEDGER.",
    )
    ledger_prefix: str = Field("", description="Prefix of every Redis key (several services on one Redis).")
    storage_uri: str | None = Field(
        None,
        description="pyarrow.fs URI for results; default <data_dir>/results. On a cluster of several nodes: "
        "s3://bucket/prefix (or gs://); S3 options as URI query, e.g. ?endpoint_override=host:port&scheme=http.",
    )
    allow_local_storage_on_cluster: bool = Field(
        False,
        description="Start even though storage_uri is a local path on a cluster of several nodes "
        "(only if that path is a shared filesystem mounted on every node).",
    )
    ingress_replicas: int = Field(
        1, ge=1, description="Ingress (HTTP/WebSocket) replicas; more than one is for the Redis ledger."
    )
    ingress_replicas_per_node: int | None = Field(
        None,
        ge=1,
        description="At most this many ingress replicas on one node (Serve's max_replicas_per_node): 1 "
        "spreads them, so losing a node loses one replica and its streams reconnect to another.",
    )
    worker_slots: int = Field(1, ge=1, description="Jobs running at once; each slot runs one job at a time.")
    worker_num_cpus: float = Field(0.5, ge=0)
    lease_s: float = Field(30.0, gt=0, description="A job whose worker misses heartbeats this long is re-queued.")
    heartbeat_s: float = Field(5.0, gt=0)
    poll_s: float = Field(
        5.0,
        gt=0,
        description="Longest an idle worker's lease request waits in the ledger; "
        "it returns the moment a job is queued.",
    )
    soft_time_limit_s: float = Field(540.0, gt=0)
    hard_time_limit_s: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(600.0, ge=0)
    result_ttl_s: float = Field(30 * 86400.0, gt=0)
    failed_ttl_s: float = Field(86400.0, gt=0)
    expiry_sweep_s: float = Field(300.0, gt=0)
    metrics_interval_s: float = Field(2.0, gt=0, description="How often queue depth and worker gauges are set.")
    log_encoding: str = Field(
        "JSON",
        pattern="^(JSON|TEXT)$",
        description="Serve log format; JSON carries rescored_job_id/rescored_stage fields.",
    )
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    separator: DeploymentOptions = Field(default_factory=DeploymentOptions)
    transcriber: DeploymentOptions = Field(default_factory=DeploymentOptions)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @field_validator("ledger")
    @classmethod
    def _ledger_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:///", "redis://", "rediss://", "unix://")):
            raise ValueError(f"ledger must be sqlite:///PATH or redis://HOST:PORT/DB, got {value!r}")
        return value

    @property
    def results_uri(self) -> str:
        return self.storage_uri or str(self.data_path / "results")

    @property
    def ledger_url(self) -> str:
        """``ledger``, or the SQLite file in the data dir."""
        return self.ledger or f"sqlite:///{self.data_path / 'ledger.sqlite3'}"
