"""Assembling the Serve application: ledger, model deployments, worker slots, ingress.

``build_app(settings)`` is what ``rescored-ray serve`` runs; ``app_builder`` is the
import path for ``serve run``/``serve deploy`` (``rescored_ray.service.app:app_builder``
with the settings under ``args.rescored``, or ``args: {config: configs/serve.yaml}``).
Every deployment gets the resolved settings: the environment was read here, once.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application, Deployment

from rescored_ray.service.config import DeploymentOptions
from rescored_ray.service.ingress import Ingress
from rescored_ray.service.ledger_deployment import LedgerDeployment
from rescored_ray.service.models import SeparatorDeployment, TranscriberDeployment
from rescored_ray.service.worker import PipelineWorker
from rescored_ray.settings import Settings, load_settings


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
    logging_config = {"encoding": service.log_encoding}  # JSON: each line carries rescored_job_id/_stage
    ledger = (
        _deployment(LedgerDeployment)
        .options(ray_actor_options={"num_cpus": 0}, logging_config=logging_config)
        .bind(data)
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
    return (
        _deployment(Ingress)
        .options(ray_actor_options={"num_cpus": 0}, logging_config=logging_config)
        .bind(data, ledger, worker)
    )


def app_builder(args: dict[str, Any]) -> Application:
    """Import path for ``serve run configs/serve.yaml`` (settings in ``args.rescored``), or
    ``serve run rescored_ray.service.app:app_builder config=path.yaml``."""
    if "rescored" in args:
        return build_app(load_settings(document=args))
    return build_app(load_settings(args.get("config")))
