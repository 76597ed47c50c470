"""How a batch run's stages share the cluster: pool sizes, CPU/GPU reservations, model threads.

Planned once per run from the cluster's resources (Ray's alive nodes); anything the
:class:`~rescored_ray.batch.config.BatchConfig` (the settings' ``batch`` section) sets explicitly wins. Why it looks like this:

- **CPU-only clusters: one single-threaded Demucs actor per core**, as many as the node's
  memory holds (a 15-minute song peaks at about 5 GiB). Demucs is most of the work and
  every core should run it, but a multi-threaded Demucs runs each layer as a parallel
  region whose threads wait for each other: when anything else needs a core (the other
  stages, other processes) one thread is descheduled and all of them wait. Measured on
  2 cores, 4 songs of 20 s, machine load about 3: one 2-thread Demucs actor 83 s, two
  1-thread actors 42 s. Single-threaded actors lose nothing to a neighbour but the time
  it really uses.
- **Ray's reservations are only for scheduling**: the separators reserve
  ``1 - OVERLAP_SHARE`` of their threads and the download, transcription and notation
  pools split what is left, so all of them run *next to* Demucs on the same cores (the
  OS shares the cores) instead of waiting for CPUs that Demucs holds. Their model runs
  single-threaded too.
- **GPU clusters** keep the fractional-GPU packing: per GPU one Demucs actor at 0.5 and
  Basic Pitch actors at 0.25 in the rest, one CPU each.
- **Pools are fixed-size** (min = max actors): every actor starts, and loads its model,
  once with the run; an autoscaling pool would start one mid-run, and pay its start-up
  while songs wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rescored_ray.batch.config import ActorStage, BatchConfig
from rescored_ray.config import PipelineConfig
from rescored_ray.errors import ConfigError

if TYPE_CHECKING:
    from rescored_ray.settings import Settings

GIB = 2**30
SEPARATOR_MEMORY = {"base": 1.0 * GIB, "per_audio_second": 4.6 * 2**20}
"""Peak memory of a Demucs actor (full-size HTDemucs, bf16, 1 thread), measured: 1.05 GiB for
a 20 s song, 5.0 GiB for 15 minutes; it grows with the song (the stems are held whole)."""
TRANSCRIBER_MEMORY = 0.5 * GIB
"""A Basic Pitch actor (the ONNX session and a song's windows) when it is the main stage."""
OVERLAP_SHARE = 0.25
"""The part of each main actor's thread the other stages reserve next to it: their share of
the CPU work on the default path is 10-20 % (``bench/throughput.py``)."""
MAX_DOWNLOADS = 4
"""Downloads in flight unless configured: enough to keep the models fed, never a crowd on one site."""
SEPARATORS_PER_TRANSCRIBER = 4
"""Basic Pitch needs about a tenth of Demucs' time per song, so one actor serves several separators."""


@dataclass(frozen=True)
class StagePlan:
    """One stage: ``size`` actors (or tasks in flight), each reserving ``num_cpus``/``num_gpus``
    and running its model on ``threads`` threads (None: the CPUs Ray grants it)."""

    size: int
    num_cpus: float
    num_gpus: float = 0.0
    threads: int | None = None
    max_size: int | None = None  # an autoscaling pool, only when the config asks for one

    def describe(self) -> str:
        size = f"{self.size}-{self.max_size}" if self.max_size and self.max_size > self.size else str(self.size)
        extras = "".join(
            [f" x {self.num_gpus:g} GPU" if self.num_gpus else "", f", {self.threads} threads" if self.threads else ""]
        )
        return f"{size} x {self.num_cpus:g} CPU{extras}"


@dataclass(frozen=True)
class BatchPlan:
    download: StagePlan
    separator: StagePlan | None  # None: separation is off
    transcriber: StagePlan
    notation: StagePlan
    cluster: str

    def stages(self) -> dict[str, StagePlan]:
        named = {
            "download": self.download,
            "separator": self.separator,
            "transcriber": self.transcriber,
            "notation": self.notation,
        }
        return {name: stage for name, stage in named.items() if stage is not None}

    def reserved_cpus(self) -> float:
        return sum(stage.num_cpus * (stage.max_size or stage.size) for stage in self.stages().values())

    def describe(self) -> str:
        return f"{self.cluster}: " + "; ".join(f"{name} {stage.describe()}" for name, stage in self.stages().items())


def cluster_nodes() -> list[dict[str, float]]:
    """CPUs, GPUs and memory (bytes tasks and actors may use) of each alive node of the connected Ray cluster."""
    import ray

    return [
        {name: float(node["Resources"].get(name, 0)) for name in ("CPU", "GPU", "memory")}
        for node in ray.nodes()
        if node.get("Alive")
    ]


def plan_batch(settings: Settings, nodes: list[dict[str, float]]) -> BatchPlan:
    """The plan for the ``batch`` and ``pipeline`` sections of ``settings`` on a cluster of
    ``nodes`` (see the module docstring).

    Raises :class:`~rescored_ray.errors.ConfigError` when the explicit settings cannot fit
    the cluster: Ray would wait for resources that never come.
    """
    config, pipeline = settings.batch, settings.pipeline
    cpus = [node.get("CPU", 0.0) for node in nodes if node.get("CPU", 0.0) > 0]
    if not cpus:
        raise ConfigError("the Ray cluster has no CPUs")
    gpus = sum(node.get("GPU", 0.0) for node in nodes)
    if gpus > 0:
        plan = _gpu_plan(config, cpus, gpus, pipeline.separation.enabled)
    else:
        plan = _cpu_plan(config, pipeline, nodes)
        main = plan.separator or plan.transcriber
        planned_size = not (config.separator if plan.separator else config.transcriber).min_actors
        while planned_size and main.size > 1 and plan.reserved_cpus() > sum(cpus) + 1e-9:
            # explicit reservations of the other stages: fewer main actors, until all fit
            plan = _cpu_plan(config, pipeline, nodes, max_main=main.size - 1)
            main = plan.separator or plan.transcriber
    if plan.reserved_cpus() > sum(cpus) + 1e-9:
        raise ConfigError(
            f"the batch settings reserve {plan.reserved_cpus():g} CPUs but the cluster has "
            f"{sum(cpus):g} ({plan.describe()}); lower num_cpus or the pool sizes, or leave them "
            "null to have them planned"
        )
    return plan


def _cpu_plan(
    config: BatchConfig, pipeline: PipelineConfig, nodes: list[dict[str, float]], max_main: int | None = None
) -> BatchPlan:
    separating = pipeline.separation.enabled
    main_name = "separator" if separating else "transcriber"
    main_cfg: ActorStage = getattr(config, main_name)
    if separating:
        memory = SEPARATOR_MEMORY["base"] + SEPARATOR_MEMORY["per_audio_second"] * pipeline.source.max_duration_s
    else:
        memory = TRANSCRIBER_MEMORY
    hosts = [node for node in nodes if node.get("CPU", 0.0) > 0]
    per_node = []  # (actors, threads) each node can run
    for node in hosts:
        cores = int(node["CPU"]) or 1
        if main_cfg.num_cpus:  # an explicit reservation: as many as fit beside the other stages
            actors = int(cores * (1 - OVERLAP_SHARE) / main_cfg.num_cpus + 1e-9)
        else:
            actors = cores // main_cfg.threads if main_cfg.threads else cores
        if node.get("memory"):  # Ray reports what tasks and actors may use
            actors = min(actors, int(node["memory"] // memory))
        per_node.append((max(1, actors), max(1, cores // max(1, actors))))
    threads = main_cfg.threads or min(threads for _, threads in per_node)
    main = _actor_stage(
        main_cfg,
        size=min(sum(actors for actors, _ in per_node), max_main or 1 << 30),
        num_cpus=round(threads * (1 - OVERLAP_SHARE), 2),
        threads=threads,
    )
    actors = main.size

    transcriber = None
    helpers = {
        "download": config.download.concurrency or min(MAX_DOWNLOADS, actors + 1),
        "notation": config.notation.concurrency or max(1, math.ceil(actors / 2)),
    }
    if separating:
        helpers["transcriber"] = config.transcriber.min_actors or max(1, math.ceil(actors / SEPARATORS_PER_TRANSCRIBER))
    # the helpers split what the main stage leaves, and never reserve more than a CPU each
    cpus = sum(node["CPU"] for node in hosts)
    left = cpus - main.num_cpus * (main.max_size or main.size)
    share = max(0.05, min(1.0, math.floor(1000 * left / sum(helpers.values())) / 1000))
    if separating:
        transcriber = _actor_stage(config.transcriber, size=helpers["transcriber"], num_cpus=share, threads=1)
    return BatchPlan(
        download=StagePlan(helpers["download"], config.download.num_cpus or share),
        separator=main if separating else None,
        transcriber=transcriber or main,
        notation=StagePlan(helpers["notation"], config.notation.num_cpus or share),
        cluster=f"CPU-only, {len(hosts)} node(s), {cpus:g} CPUs",
    )


def _gpu_plan(config: BatchConfig, cpus: list[float], gpus: float, separating: bool) -> BatchPlan:
    per_gpu = int(gpus)  # whole cards; a fractional total (a shared card) still packs one set
    separator = None
    free_share = 1.0
    if separating:
        share = config.separator.gpus("separator", True)
        separator = _actor_stage(config.separator, size=max(1, per_gpu), num_cpus=1.0, num_gpus=share)
        free_share -= share
    share = config.transcriber.gpus("transcriber", True)
    per_card = max(1, int(free_share / share + 1e-9)) if share else 1
    transcriber = _actor_stage(config.transcriber, size=max(1, per_gpu) * per_card, num_cpus=1.0, num_gpus=share)
    return BatchPlan(
        download=StagePlan(
            config.download.concurrency or min(MAX_DOWNLOADS, (separator or transcriber).size + 1),
            config.download.num_cpus or 1.0,
        ),
        separator=separator,
        transcriber=transcriber,
        notation=StagePlan(
            config.notation.concurrency or max(1, (separator or transcriber).size), config.notation.num_cpus or 1.0
        ),
        cluster=f"{gpus:g} GPU(s), {len(cpus)} node(s), {sum(cpus):g} CPUs",
    )


def _actor_stage(
    cfg: ActorStage, *, size: int, num_cpus: float, threads: int | None = None, num_gpus: float = 0.0
) -> StagePlan:
    """A planned actor pool, with whatever the config sets explicitly in its place."""
    size = cfg.min_actors or size
    max_size = cfg.max_actors if cfg.max_actors and cfg.max_actors > size else None
    return StagePlan(
        size=size,
        num_cpus=cfg.num_cpus or num_cpus,
        num_gpus=cfg.num_gpus if cfg.num_gpus is not None else num_gpus,
        threads=cfg.threads or threads,
        max_size=max_size,
    )
