"""Assembling the Serve application: ledger, model deployments, worker slots, ingress.

``build_app(settings)`` is what ``rescored-ray serve`` runs; ``app_builder`` is the
import path for ``serve run``/``serve deploy`` (``rescored_ray.service.app:app_builder``
with the settings under ``args.rescored``, or ``args: {config: configs/serve.yaml}``).
Every deployment gets the resolved settings: the environment was read here, once.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application, Deployment

from rescored_ray.errors import ConfigError
from rescored_ray.service.config import DeploymentOptions, ServiceConfig
from rescored_ray.service.ingress import Ingress
from rescored_ray.service.ledger_client import ledger_kind
from rescored_ray.service.ledger_deployment import LedgerDeployment
from rescored_ray.service.models import SeparatorDeployment, TranscriberDeployment
from rescored_ray.service.worker import PipelineWorker
from rescored_ray.settings import Settings, load_settings
from rescored_ray.storage import is_local_uri

log = logging.getLogger(__name__)

HEAD_NODE = "node:__internal_head__"  # a resource only Ray's head node has


def _alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive")) if ray.is_initialized() else 1


def check_cluster(service: ServiceConfig, nodes: int | None = None) -> None:
    """Refuse what cannot work on a cluster of several nodes, at start rather than at the first
    job: results on one node's local disk (every other node would miss them) unless the operator
    says the path is shared. A SQLite ledger is allowed (pinned to the head node) but warned about."""
    nodes = _alive_nodes() if nodes is None else nodes
    if nodes <= 1:
        return
    if is_local_uri(service.results_uri) and not service.allow_local_storage_on_cluster:
        raise ConfigError(
            f"storage_uri {service.results_uri!r} is a local path, but this Ray cluster has {nodes} nodes: "
            "results written on one node could not be served from another. Use storage_uri: s3://bucket/prefix "
            "(or gs://), or set service.allow_local_storage_on_cluster: true if that path is a filesystem "
            "shared by every node."
        )
    if ledger_kind(service.ledger_url) == "sqlite":
        log.warning(
            "the SQLite ledger keeps every job on the head node's disk (%d nodes in this cluster): losing the "
            "head loses the jobs, and every request goes through one Ledger replica. Use service.ledger: "
            "redis://HOST:PORT/DB for a service across nodes.",
            nodes,
        )


def _gpus_available() -> bool:
    import ray

    return bool(ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0)


def _model_options(options: DeploymentOptions, num_gpus: float, logging_config: dict) -> dict[str, Any]:
    scaling: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": options.num_cpus, "num_gpus": num_gpus},
        "max_ongoing_requests": options.max_ongoing_requests,
        "logging_config": logging_config,
    }
    if options.max_replicas > options.min_replicas:
        scaling["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        }
    else:
        scaling["num_replicas"] = options.min_replicas or 1
    return scaling


def _deployment(decorated: Any) -> Deployment:
    """A class under ``@serve.deployment`` is a Deployment (Serve's typing does not say so)."""
    assert isinstance(decorated, Deployment)
    return decorated


def build_app(settings: Settings, gpus_available: bool | None = None) -> Application:
    gpus = _gpus_available() if gpus_available is None else gpus_available
    service, pipeline = settings.service, settings.pipeline
    data = settings.model_dump()
    check_cluster(service)
    logging_config = {"encoding": service.log_encoding}  # JSON: each line carries rescored_job_id/_stage
    ledger_actor: dict[str, Any] = {"num_cpus": 0}
    if ledger_kind(service.ledger_url) == "sqlite":
        # its file is on one node's disk: keep it on the head node, which outlives the workers
        ledger_actor["resources"] = {HEAD_NODE: 0.001}
    ledger = (
        _deployment(LedgerDeployment).options(ray_actor_options=ledger_actor, logging_config=logging_config).bind(data)
    )
    separator = None  # a service for solo recordings (separation: none) deploys no Demucs at all
    if pipeline.separation.enabled:
        separator = (
            _deployment(SeparatorDeployment)
            .options(**_model_options(service.separator, service.separator.gpus("separator", gpus), logging_config))
            .bind(pipeline.separation.model_dump())
        )
    transcriber = (
        _deployment(TranscriberDeployment)
        .options(**_model_options(service.transcriber, service.transcriber.gpus("transcriber", gpus), logging_config))
        .bind(pipeline.transcription.model_dump())
    )
    worker = (
        _deployment(PipelineWorker)
        .options(
            num_replicas=service.worker_slots,
            ray_actor_options={"num_cpus": service.worker_num_cpus},
            logging_config=logging_config,
        )
        .bind(data, ledger, separator, transcriber)
    )
    ingress: dict[str, Any] = {"num_replicas": service.ingress_replicas}
    if service.ingress_replicas_per_node is not None:  # spread over nodes: a lost node takes one replica
        ingress["max_replicas_per_node"] = service.ingress_replicas_per_node
    return (
        _deployment(Ingress)
        .options(**ingress, ray_actor_options={"num_cpus": 0}, logging_config=logging_config)
        .bind(data, ledger, worker)
    )


def app_builder(args: dict[str, Any]) -> Application:
    """Import path for ``serve run configs/serve.yaml`` (settings in ``args.rescored``), or
    ``serve run rescored_ray.service.app:app_builder config=path.yaml``."""
    if "rescored" in args:
        return build_app(load_settings(document=args))
    return build_app(load_settings(args.get("config")))
