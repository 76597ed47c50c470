"""Our metrics, exported through Ray's metrics agent (``ray.util.metrics``).

They show up wherever Ray's own metrics do: the Prometheus endpoint of each node's
metrics agent (names get Ray's ``ray_`` prefix, e.g. ``ray_rescored_jobs_completed_total``),
``ray metrics launch-prometheus``, the Ray dashboard's Grafana panels, and our own
dashboard ``configs/grafana/rescored.json``. :data:`METRICS` is the single list of what
exists; the Grafana dashboard and the README are checked against it by the tests.

Who records what: the ledger (submissions, outcomes, retries, queue depth, running jobs,
worker slots, queue wait), the pipeline workers and batch stages (stage durations, audio
processed), the model holders (load time, GPU->CPU fallbacks), the batch driver (entries).
Recording never raises: a metrics hiccup must not fail a job. This module imports Ray;
the pipeline core never imports it.

Gauges are re-sent every second for as long as the process lives: Ray's metrics agent
evicts a gauge value that its process has not re-reported within two export intervals,
so a gauge set once (a model's load time) would otherwise vanish from Prometheus while
the model is still loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rescored_ray.timeline import StageSpan

log = logging.getLogger(__name__)

STAGE_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600]
JOB_BUCKETS_S = [1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600]


@dataclass(frozen=True)
class MetricSpec:
    kind: str  # "counter" | "gauge" | "histogram"
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()


METRICS: dict[str, MetricSpec] = {
    "rescored_jobs_submitted_total": MetricSpec(
        "counter", "Submissions accepted (deduplicated=true: joined an existing job).", ("priority", "deduplicated")
    ),
    "rescored_jobs_completed_total": MetricSpec("counter", "Jobs completed.", ("priority",)),
    "rescored_jobs_failed_total": MetricSpec(
        "counter",
        "Jobs failed for good (after retries, or permanent errors at once).",
        ("priority", "stage", "retryable"),
    ),
    "rescored_jobs_cancelled_total": MetricSpec("counter", "Jobs cancelled by their users.", ("priority",)),
    "rescored_job_retries_total": MetricSpec(
        "counter",
        "Attempts that will be retried: a transient error, or a worker lost mid-job (lease expired).",
        ("stage", "reason"),
    ),
    "rescored_queue_depth": MetricSpec("gauge", "Jobs waiting in the queue.", ("priority",)),
    "rescored_jobs_running": MetricSpec("gauge", "Jobs leased by a worker now."),
    "rescored_worker_slots": MetricSpec("gauge", "Worker slots seen by the ledger, busy or idle.", ("state",)),
    "rescored_queue_wait_seconds": MetricSpec(
        "histogram", "Time from submission to a worker taking the job.", ("priority",), tuple(JOB_BUCKETS_S)
    ),
    "rescored_job_seconds": MetricSpec(
        "histogram", "Time from submission to completion.", ("priority",), tuple(JOB_BUCKETS_S)
    ),
    "rescored_stage_seconds": MetricSpec(
        "histogram", "Duration of one pipeline stage of one song.", ("stage", "path", "ok"), tuple(STAGE_BUCKETS_S)
    ),
    "rescored_audio_seconds_total": MetricSpec("counter", "Seconds of audio transcribed.", ("path",)),
    "rescored_model_load_seconds": MetricSpec("gauge", "Time the model holder took to load its model.", ("model",)),
    "rescored_gpu_cpu_fallbacks_total": MetricSpec(
        "counter", "Songs moved from the GPU to the CPU after a CUDA out-of-memory error.", ("model",)
    ),
    "rescored_batch_entries_total": MetricSpec(
        "counter", "Batch entries finished, by outcome (completed, failed, skipped).", ("status", "stage")
    ),
}

_lock = threading.Lock()
_objects: dict[str, Any] = {}
_gauges: dict[
    tuple[str, tuple[tuple[str, str], ...]], tuple[float, dict[str, Any] | None]
] = {}  # (name, tags) -> last value, kept alive
_keeper: threading.Thread | None = None
GAUGE_REFRESH_S = 1.0


def _metric(name: str) -> Any:
    with _lock:
        if name not in _objects:
            from ray.util import metrics

            spec = METRICS[name]
            if spec.kind == "counter":
                _objects[name] = metrics.Counter(name, spec.description, tag_keys=spec.tags)
            elif spec.kind == "gauge":
                _objects[name] = metrics.Gauge(name, spec.description, tag_keys=spec.tags)
            else:
                _objects[name] = metrics.Histogram(
                    name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tags
                )
        return _objects[name]


def _tags(name: str, tags: dict[str, Any]) -> dict[str, str] | None:
    expected = METRICS[name].tags
    if set(tags) != set(expected):
        raise ValueError(f"{name} takes tags {expected}, got {sorted(tags)}")
    return {key: _text(value) for key, value in tags.items()} or None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def inc(name: str, value: float = 1.0, **tags: Any) -> None:
    """Add ``value`` to counter ``name``."""
    _record(name, "inc", value, tags)


def set_gauge(name: str, value: float, **tags: Any) -> None:
    """Set gauge ``name``; the value is re-sent every second until it is set again."""
    global _keeper
    tag_values = _tags(name, tags)
    with _lock:
        _gauges[(name, tuple(sorted((tag_values or {}).items())))] = (float(value), tag_values)
        if _keeper is None or not _keeper.is_alive():
            _keeper = threading.Thread(target=_keep_gauges, name="rescored-gauges", daemon=True)
            _keeper.start()
    _record(name, "set", value, tags)


def _keep_gauges() -> None:
    while True:
        time.sleep(GAUGE_REFRESH_S)
        with _lock:
            held = list(_gauges.items())
        for (name, _), (value, tag_values) in held:
            try:
                _metric(name).set(value, tags=tag_values)
            except Exception:
                log.debug("could not refresh %s", name, exc_info=True)


def observe(name: str, value: float, **tags: Any) -> None:
    """Add one observation to histogram ``name``."""
    _record(name, "observe", value, tags)


def _record(name: str, method: str, value: float, tags: dict[str, Any]) -> None:
    tag_values = _tags(name, tags)  # a wrong tag is a bug: raise it, in tests too
    try:
        getattr(_metric(name), method)(float(value), tags=tag_values)
    except Exception:
        log.debug("could not record %s", name, exc_info=True)


def stage_listener(path: str) -> Callable[[StageSpan], None]:
    """A :class:`~rescored_ray.timeline.Timeline` listener recording ``rescored_stage_seconds``."""

    def record(span: StageSpan) -> None:
        observe("rescored_stage_seconds", span.seconds, stage=span.stage, path=path, ok=span.ok)

    return record
