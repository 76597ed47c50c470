"""Settings of a batch run: per-stage resources, pool sizes, batch sizes, retries.

The pipeline's own settings sit under ``pipeline:`` (the same
:class:`~rescored_ray.config.PipelineConfig` the CLI and the service use);
``RESCORED_<SECTION>_<FIELD>`` environment variables override them as everywhere.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

from rescored_ray.config import PipelineConfig, _deep_merge, env_overrides, gpu_share, read_yaml_mapping

class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskStage(_Section):
    """A stateless CPU stage run as Ray tasks."""

    num_cpus: float = Field(1.0, gt=0)
    concurrency: int = Field(2, ge=1, description="Tasks in flight at most (bounds load on a site or a disk).")


class ActorStage(_Section):
    """A model stage run by a pool of actors that load the model once."""

    num_gpus: float | None = Field(None, ge=0, le=1, description="GPU share per actor; null = default on GPU clusters, 0 on CPU.")
    num_cpus: float = Field(1.0, gt=0)
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1)
    batch_size: int = Field(1, ge=1, description="Songs per call.")


class BatchConfig(_Section):
    """Everything ``rescored-ray batch`` needs; one file, ``configs/batch.yaml``."""

    download: TaskStage = Field(default_factory=lambda: TaskStage(num_cpus=1.0, concurrency=4))
    separator: ActorStage = Field(default_factory=ActorStage)
    transcriber: ActorStage = Field(default_factory=ActorStage)
    notation: TaskStage = Field(default_factory=lambda: TaskStage(num_cpus=1.0, concurrency=2))
    max_retries: int = Field(2, ge=0, description="Extra attempts of a stage after a transient error.")
    backoff_base_s: float = Field(2.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    max_playlist_entries: int = Field(5000, ge=1)
    object_store_memory: int | None = Field(
        None, gt=0, description="Bytes of object store the run may fill before it backs off (Ray Data's limit).")
    manifest_flush_rows: int = Field(16, ge=1, description="Write a manifest part after this many finished entries...")
    manifest_flush_s: float = Field(30.0, gt=0, description="...or after this many seconds, whichever comes first.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    def gpus_for(self, name: str, gpus_available: bool) -> float:
        return gpu_share(name, getattr(self, name).num_gpus, gpus_available)


def load_batch_config(
    path: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> BatchConfig:
    """Defaults, then the YAML file, then ``RESCORED_*`` environment variables, then ``overrides``."""
    data = read_yaml_mapping(path) if path is not None else {}
    data = _deep_merge(data, {"pipeline": env_overrides(os.environ if env is None else env)})
    if overrides:
        data = _deep_merge(data, overrides)
    return BatchConfig.model_validate(data)
