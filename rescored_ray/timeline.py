"""Where one job's time went: each stage's wall-clock span and the worker that ran it.

A :class:`Timeline` is filled by the pipeline as it runs (``with timeline.stage("separation")``)
and read three ways: ``seconds()`` (the per-stage totals in ``result.json`` and the batch
manifest), ``to_list()`` (the per-attempt timeline of the job record, served by
``GET /api/v1/jobs/{id}``) and listeners called as each stage ends (the Ray layer turns
those into metrics). Nothing here imports Ray; when Ray is running in this process the
worker identity includes its node and actor.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from rescored_ray import logs


@dataclass
class StageSpan:
    """One stage of one attempt; ``workers`` says which processes ran it (several when
    stems were transcribed by different replicas)."""

    stage: str
    started_at: float
    ended_at: float | None = None
    seconds: float = 0.0
    ok: bool = True
    workers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 4)
        return data


StageListener = Callable[[StageSpan], None]
"""Called once per stage when it ends (also when it failed: ``span.ok`` is False)."""


class Timeline:
    """The spans of one run, in the order the stages started."""

    def __init__(
        self,
        listeners: list[StageListener] | tuple[StageListener, ...] = (),
        spans: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
    ):
        """``spans``: earlier stages of the same run (``to_list()`` of another process's
        timeline), so a batch entry's stages, run by different workers, form one timeline."""
        self.spans: list[StageSpan] = [StageSpan(**span) for span in spans]
        self.listeners = list(listeners)

    @contextmanager
    def stage(self, name: str) -> Iterator[StageSpan]:
        """Time ``name``; log lines inside it carry the stage (see :mod:`rescored_ray.logs`)."""
        span = StageSpan(stage=name, started_at=time.time())
        started = time.perf_counter()
        self.spans.append(span)
        with logs.stage_context(name):  # listeners' log lines carry the stage too
            try:
                yield span
            except BaseException:
                span.ok = False
                raise
            finally:
                span.seconds = time.perf_counter() - started
                span.ended_at = span.started_at + span.seconds
                if not span.workers:
                    span.workers = [where()]
                for listener in self.listeners:
                    try:
                        listener(span)
                    except Exception:  # a metrics hiccup must never fail a job
                        logs.log.debug("stage listener failed", exc_info=True)

    def seconds(self) -> dict[str, float]:
        """Total seconds per stage (a stage retried in place counts every try)."""
        totals: dict[str, float] = {}
        for span in self.spans:
            totals[span.stage] = totals.get(span.stage, 0.0) + span.seconds
        return totals

    def to_list(self) -> list[dict[str, Any]]:
        return [span.to_dict() for span in self.spans]

    def reported(self, stage: str, key: str) -> Any:
        """What the workers of ``stage``'s latest span reported under ``key`` (e.g. the
        separation's ``precision``), or None when the stage did not run or said nothing."""
        for span in reversed(self.spans):
            if span.stage == stage:
                return next((worker[key] for worker in span.workers if worker.get(key) is not None), None)
        return None


def ran_on(model: object, **extra: Any) -> list[dict[str, Any]]:
    """The workers a model reports for its last call (``model.ran_on``), on top of this
    process's identity; a remote model's own identity replaces ours key by key."""
    here = where()
    reported = getattr(model, "ran_on", None) or [{}]
    return [{**here, **worker, **extra} for worker in reported]


_IDENTITY: dict[str, Any] | None = None


def where() -> dict[str, Any]:
    """This process: host and pid, plus Ray node and actor when Ray runs here."""
    global _IDENTITY
    if _IDENTITY is None or _IDENTITY.get("pid") != os.getpid():
        identity: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
        ray = sys.modules.get("ray")
        if ray is not None and getattr(ray, "is_initialized", lambda: False)():
            try:
                context = ray.get_runtime_context()
                identity["node_id"] = context.get_node_id()
                actor = context.get_actor_name() if context.get_actor_id() else None
                if actor:
                    identity["actor"] = actor
            except Exception:  # a driver without a worker context: host and pid still say enough
                pass
        if "node_id" not in identity:
            return identity  # Ray may start later in this process: ask again next time
        _IDENTITY = identity
    return dict(_IDENTITY)
