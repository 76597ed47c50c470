"""Batch runs' settings (the ``batch`` section of :class:`~rescored_ray.settings.Settings`).

Per-stage resources, pool sizes, batch sizes, retries. A resource or pool size left null
is planned from the cluster's resources when the run starts (:mod:`rescored_ray.batch.plan`);
a value set here wins. The pipeline's settings are the root's ``pipeline`` section, the
same the CLI and the service use; files and ``RESCORED_BATCH__<FIELD>`` variables override
both (:mod:`rescored_ray.settings`).
"""

from __future__ import annotations

from pydantic import Field

from rescored_ray.config import ModelResources, Section


class TaskStage(Section):
    """A stateless CPU stage, run by a fixed pool of actors (set up once each)."""

    num_cpus: float | None = Field(None, gt=0, description="CPU reservation of each actor; null = planned.")
    concurrency: int | None = Field(
        None, ge=1, description="Entries in flight at most (bounds load on a site or a disk); null = planned."
    )


class ActorStage(ModelResources):
    """A model stage run by a pool of actors that load the model once."""

    num_cpus: float | None = Field(None, gt=0, description="CPU reservation of each actor; null = planned.")
    min_actors: int | None = Field(
        None, ge=1, description="Actors started with the run; null = planned (a fixed pool)."
    )
    max_actors: int | None = Field(
        None, ge=1, description="The pool grows to this when songs queue up; null = min_actors."
    )
    threads: int | None = Field(
        None, ge=1, description="Model threads per actor (torch / onnxruntime); null = planned."
    )
    batch_size: int = Field(1, ge=1, description="Songs per call.")


class BatchConfig(Section):
    """Everything ``rescored-ray batch`` needs; one file, ``configs/batch.yaml``."""

    download: TaskStage = Field(default_factory=TaskStage)
    separator: ActorStage = Field(default_factory=ActorStage)
    transcriber: ActorStage = Field(default_factory=ActorStage)
    notation: TaskStage = Field(default_factory=TaskStage)
    max_retries: int = Field(2, ge=0, description="Extra attempts of a stage after a transient error.")
    backoff_base_s: float = Field(2.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    max_playlist_entries: int = Field(5000, ge=1)
    object_store_memory: int | None = Field(
        None, gt=0, description="Bytes of object store the run may fill before it backs off (Ray Data's limit)."
    )
    manifest_flush_rows: int = Field(16, ge=1, description="Write a manifest part after this many finished entries...")
    manifest_flush_s: float = Field(30.0, gt=0, description="...or after this many seconds, whichever comes first.")
