"""Pipeline workers: each replica is one worker slot running one job at a time.

A worker leases the next job from the ledger (high priority first), keeps the lease
alive with heartbeats while it runs, and only then acknowledges (complete/fail): a
worker that dies mid-job simply stops heartbeating, its lease expires and the job is
queued again (late acknowledgement with one job per worker; see docs/architecture.md).
The pipeline's checkpoint hook turns cancellation, a lost lease and the soft time limit
into exceptions at stage boundaries and between Demucs chunks (inside the Separator
replica too: :class:`~rescored_ray.service.models.RemoteSeparator` cancels its streaming
call there); the hard time limit fails this replica's health check so Serve kills and
replaces it.

Every attempt keeps a :class:`~rescored_ray.timeline.Timeline` (stage spans and the
workers that ran them) that goes into the job record when the attempt ends, feeds the
stage-duration metrics, and sets the stage on each log line (with the job id).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ray import serve

from rescored_ray import logs, metrics
from rescored_ray.errors import (
    JobCancelled,
    LeaseLost,
    NonRetryableError,
    TimeLimitExceeded,
    log_unexpected,
    unexpected,
)
from rescored_ray.netguard import guard_connections
from rescored_ray.options import JobOptions
from rescored_ray.pipeline import Pipeline, publish
from rescored_ray.service.ledger import JobRecord
from rescored_ray.service.ledger_client import worker_ledger
from rescored_ray.service.models import RemoteSeparator, RemoteTranscriber
from rescored_ray.service.serve_logs import route_to_replica_log
from rescored_ray.settings import Settings
from rescored_ray.storage import ResultStore
from rescored_ray.timeline import StageSpan, Timeline

log = logging.getLogger(__name__)


@serve.deployment(
    name="PipelineWorker",
    max_ongoing_requests=4,
    health_check_period_s=2,
    health_check_timeout_s=10,
    graceful_shutdown_timeout_s=5,
)
class PipelineWorker:
    """One worker slot: a background loop that leases and runs jobs."""

    def __init__(self, settings: dict[str, Any], ledger: Any, separator: Any, transcriber: Any):
        route_to_replica_log()
        resolved = Settings.model_validate(settings)
        self.config, self.pipeline = resolved.service, resolved.pipeline
        self.ledger = worker_ledger(self.config, ledger)  # the Ledger actor, or Redis itself
        self.separator = RemoteSeparator(separator) if separator is not None else None
        self.transcriber = RemoteTranscriber(transcriber, self.pipeline.transcription)
        self.store = ResultStore(self.config.results_uri)
        self.worker_id = f"worker-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if not self.config.security.allow_private_networks:
            # every connection a download makes, redirect hops included, goes to a public address
            guard_connections(self.config.security.networks)
        self.current: tuple[str, float] | None = None  # (job_id, monotonic start)
        self.jobs_done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rescored-worker", daemon=True)
        self._thread.start()

    # -- serve hooks ------------------------------------------------------------------------
    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("worker loop died")
        current = self.current
        if current is not None and time.monotonic() - current[1] > self.config.hard_time_limit_s:
            # Serve kills and replaces an unhealthy replica: the stuck job's lease then
            # expires and it is re-queued like any job whose worker died.
            raise RuntimeError(
                f"job {current[0]} passed the hard time limit "
                f"({self.config.hard_time_limit_s:g} s); replacing this worker"
            )

    def status(self) -> dict[str, Any]:
        current = self.current
        import ray

        return {
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "busy": current is not None,
            "actor_name": ray.get_runtime_context().get_actor_name(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "job_id": current[0] if current else None,
            "jobs_done": self.jobs_done,
        }

    def __del__(self) -> None:
        self._stop.set()

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        # Before the first lease, and on this thread (the one that notates): a cold first job
        # would spend seconds of its soft time limit on music21's, numba's and verovio's start-up.
        Pipeline(self.pipeline).warm_up_notation()
        while not self._stop.is_set():
            try:
                # a long-poll: returns the moment a job is queued, or None after poll_s
                job = self.ledger.lease_wait(self.worker_id, self.config.lease_s, self.config.poll_s)
            except Exception:  # the ledger (or Redis) is restarting: wait and ask again
                log.warning("lease request failed; retrying", exc_info=True)
                self._stop.wait(1.0)
                continue
            if job is None:
                continue
            with logs.job_context(job.job_id):
                self._run(job)

    def _run(self, job: JobRecord) -> None:
        job_id = job.job_id
        log.info("attempt %d of job %s started: %s", len(job.attempts), job_id, job.source)
        timeline = Timeline([metrics.stage_listener("service"), _log_stage])
        started = time.monotonic()
        self.current = (job_id, started)
        state = {"cancel": False, "lost": False}
        beat_stop = threading.Event()

        def heartbeat() -> None:
            while not beat_stop.wait(self.config.heartbeat_s):
                try:
                    reply = self.ledger.heartbeat(job_id, self.worker_id, self.config.lease_s)
                except Exception:
                    continue
                state["cancel"] |= reply.cancel_requested
                state["lost"] |= not reply.ok

        def checkpoint() -> None:
            if state["cancel"]:
                raise JobCancelled(job_id=job_id)
            if state["lost"]:
                raise LeaseLost("lease lost; another worker has the job", stage="pipeline")
            if time.monotonic() - started > self.config.soft_time_limit_s:
                raise TimeLimitExceeded(
                    f"soft time limit of {self.config.soft_time_limit_s:g} s exceeded", stage="pipeline"
                )

        def progress(percent: int, stage: str, message: str) -> None:
            # Fire and forget: the job never waits on its progress report. A lost lease is
            # noticed by the heartbeat instead; a late report is dropped by the ledger.
            self.ledger.progress(job_id, self.worker_id, percent, stage, message)

        beater = threading.Thread(target=heartbeat, name=f"heartbeat-{job_id[:8]}", daemon=True)
        beater.start()
        try:
            cfg = JobOptions.model_validate(job.options).apply(self.pipeline)
            cfg.source.temp_dir = str(self._temp_parent())
            if cfg.separation.enabled and self.separator is None:
                raise NonRetryableError("this service deploys no separation model", stage="separation")
            pipeline = Pipeline(
                cfg, separator=self.separator if cfg.separation.enabled else None, transcriber=self.transcriber
            )
            # The job's folder is gone before the ledger hears how the attempt ended, so a job
            # that reads as finished has left nothing behind.
            with tempfile.TemporaryDirectory(
                prefix=f"rescored_out_{job_id[:16]}_", dir=self._temp_parent(), ignore_cleanup_errors=True
            ) as out:
                result = pipeline.run(
                    job.source, out, progress=progress, checkpoint=checkpoint, job_id=job_id, timeline=timeline
                )
                checkpoint()
                with timeline.stage("upload"):
                    publish(result, self.store, job_id)  # under <job_id>/: the record keeps the relative names
            summary = result.to_dict()
            summary.pop("output_dir", None)
            summary.pop("timeline", None)  # kept on the attempt instead, with the upload span
            self._acknowledge("complete", job_id, self.worker_id, summary, timeline.to_list())
            metrics.inc("rescored_audio_seconds_total", result.duration_s, path="service")
            self.jobs_done += 1
            log.info(
                "job %s completed: %d notes, %.1f s of audio in %.1f s",
                job_id,
                result.n_notes,
                result.duration_s,
                time.monotonic() - started,
            )
        except JobCancelled:
            self._acknowledge("mark_cancelled", job_id, self.worker_id, timeline.to_list())
            log.info("job %s cancelled", job_id)
        except LeaseLost:
            log.warning("job %s: lease lost, abandoning this attempt", job_id)
        except Exception as exc:
            # Expected failures (bad input, a download refused) are one line; an unexpected error
            # had its traceback logged once, where it happened (here, or pipeline._in_stage), and
            # is retryable by the one rule of rescored_ray.errors.unexpected.
            log_unexpected(exc, "pipeline")
            error = unexpected(exc, "pipeline")
            with logs.stage_context(error.stage):
                log.warning(
                    "job %s attempt failed in %s (%s): %s",
                    job_id,
                    error.stage,
                    "transient" if error.retryable else "permanent",
                    error.message,
                )
            self._acknowledge("fail", job_id, self.worker_id, error.to_dict(), error.retryable, timeline.to_list())
        finally:
            beat_stop.set()
            self.current = None

    def _acknowledge(self, method: str, job_id: str, *args: Any) -> None:
        """Tell the ledger how the attempt ended, retrying while it restarts or its disk is full.

        Gives up after one lease period: by then the lease has expired and the job is
        re-queued anyway (late acknowledgement: nothing is lost, the attempt is repeated).
        A retry after a reply that got lost is harmless: the ledger only accepts the
        acknowledgement from the lease holder, once.
        """
        deadline = time.monotonic() + self.config.lease_s
        delay = 0.2
        while True:
            try:
                self.ledger.acknowledge(method, job_id, *args)
                return
            except Exception as exc:
                if time.monotonic() + delay > deadline or self._stop.is_set():
                    log.error(
                        "job %s: could not %s it in the ledger (%s); its lease will expire and "
                        "the job will be re-queued",
                        job_id,
                        method.replace("_", " "),
                        exc,
                    )
                    return
                log.warning("job %s: ledger %s failed (%s); retrying in %.1f s", job_id, method, exc, delay)
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def _temp_parent(self) -> Path:
        path = self.config.data_path / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _log_stage(span: StageSpan) -> None:
    """One line per stage: how long it took and where it ran (the job context is on it)."""
    ran_on = ", ".join(
        " ".join(str(w[k]) for k in ("actor", "device", "stem") if w.get(k)) or w.get("host", "") for w in span.workers
    )
    log.info("%s %s in %.2f s (%s)", span.stage, "done" if span.ok else "failed", span.seconds, ran_on)
