"""How the ingress and the workers reach the ledger: through the Ledger actor, or straight to Redis.

``service.ledger`` picks the store (:func:`ledger_kind`):

* ``sqlite:///PATH`` (the default, ``<data_dir>/ledger.sqlite3``): one file, so one process
  owns it: the Ledger deployment (one replica, pinned to the head node). The ingress and
  the workers call it through Serve handles; it wakes long-polls from its event loop.
* ``redis://HOST:PORT/DB``: every ingress replica and every worker opens its own
  :class:`~rescored_ray.service.redis_store.RedisJobStore` and talks to Redis directly: no
  actor on the path, so the ingress can run several replicas on several nodes, idle
  workers wait on the ``queue`` channel, and WebSockets stream from ``job:{id}:updates``.
  The Ledger deployment stays for the housekeeping nobody waits on (expiry sweeps that
  delete result files, taking back expired leases, the queue gauges).

The two adapters of each side have the same methods, so the ingress and the worker code
is the same in both modes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rescored_ray import logs, metrics
from rescored_ray.service.config import ServiceConfig
from rescored_ray.service.ledger import (
    HeartbeatReply,
    JobRecord,
    JobStatus,
    JobStore,
    SQLiteJobStore,
    event_message,
)

log = logging.getLogger(__name__)


def ledger_kind(url: str) -> str:
    """``"sqlite"`` or ``"redis"``: which store a ``service.ledger`` URL names."""
    return "redis" if url.startswith(("redis://", "rediss://", "unix://")) else "sqlite"


def open_store(config: ServiceConfig, on_transition: Any = None) -> JobStore:
    """The job store ``config.ledger_url`` names, with the service's retry and expiry settings."""
    common: dict[str, Any] = {
        "max_retries": config.max_retries,
        "backoff_base_s": config.backoff_base_s,
        "backoff_max_s": config.backoff_max_s,
        "failed_ttl_s": config.failed_ttl_s,
        "result_ttl_s": config.result_ttl_s,
        "on_transition": on_transition,
    }
    url = config.ledger_url
    if ledger_kind(url) == "redis":
        from rescored_ray.service.redis_store import RedisJobStore

        return RedisJobStore(url, prefix=config.ledger_prefix, **common)
    # sqlite:///relative/path, sqlite:////absolute/path (SQLAlchemy's spelling)
    return SQLiteJobStore(Path(url.removeprefix("sqlite:///")).expanduser(), **common)


def record_transition(kind: str, job: JobRecord, info: dict) -> None:
    """Metrics (and a log line for failures) of one committed transition of a job; called
    in whichever process made the change (the Ledger actor, or with Redis any replica)."""
    priority = job.priority
    if kind == "submitted":
        metrics.inc("rescored_jobs_submitted_total", priority=priority, deduplicated=info["deduplicated"])
    elif kind == "leased" and info.get("waited_s") is not None:
        metrics.observe("rescored_queue_wait_seconds", info["waited_s"], priority=priority)
    elif kind == "completed":
        metrics.inc("rescored_jobs_completed_total", priority=priority)
        metrics.observe(
            "rescored_job_seconds", (job.completed_at or job.updated_at) - job.created_at, priority=priority
        )
    elif kind == "retrying":
        metrics.inc("rescored_job_retries_total", stage=info["error"].get("stage"), reason=info["reason"])
    elif kind == "failed":
        error = info["error"]
        metrics.inc(
            "rescored_jobs_failed_total",
            priority=priority,
            stage=error.get("stage"),
            retryable=bool(error.get("retryable")),
        )
        log.info(
            "job %s failed in %s: %s",
            job.job_id,
            error.get("stage"),
            error.get("message"),
            extra={logs.JOB_ID_FIELD: job.job_id, logs.STAGE_FIELD: error.get("stage")},
        )
    elif kind == "cancelled":
        metrics.inc("rescored_jobs_cancelled_total", priority=priority)


def worker_slots(running: list[JobRecord], seen: dict[str, float], config: ServiceConfig, now: float) -> list[dict]:
    """Worker slots that asked for work within one lease period: busy (and with which job)
    or idle. A slot that stopped asking has died or is being replaced."""
    by_owner = {job.lease_owner: job for job in running}
    window = config.lease_s + config.poll_s  # an idle worker asks at least every poll_s, a busy one heartbeats
    return [
        {
            "worker_id": worker,
            "busy": worker in by_owner,
            "job_id": by_owner[worker].job_id if worker in by_owner else None,
            "stage": by_owner[worker].current_stage if worker in by_owner else None,
            "last_seen_s": round(now - at, 2),
        }
        for worker, at in sorted(seen.items())
        if now - at <= window
    ]


# -- the worker's side (synchronous: the worker loop is a thread) --------------------------------


class WorkerLedger:
    """What a :class:`~rescored_ray.service.worker.PipelineWorker` asks of the ledger."""

    def lease_wait(self, worker_id: str, lease_s: float, wait_s: float) -> JobRecord | None:
        raise NotImplementedError

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> HeartbeatReply:
        raise NotImplementedError

    def progress(self, job_id: str, worker_id: str, percent: int, stage: str, message: str) -> None:
        """Fire and forget: the job never waits on its progress report."""
        raise NotImplementedError

    def acknowledge(self, method: str, job_id: str, *args: Any) -> None:
        """``complete``, ``fail`` or ``mark_cancelled``; raises if the ledger cannot be reached."""
        raise NotImplementedError


class ActorWorkerLedger(WorkerLedger):
    """Through the Ledger deployment's handle (SQLite mode)."""

    def __init__(self, handle: Any):
        self.handle = handle

    def lease_wait(self, worker_id: str, lease_s: float, wait_s: float) -> JobRecord | None:
        job: JobRecord | None = self.handle.lease_wait.remote(worker_id, lease_s, wait_s).result()
        return job

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> HeartbeatReply:
        reply: HeartbeatReply = self.handle.heartbeat.remote(job_id, worker_id, lease_s).result()
        return reply

    def progress(self, job_id: str, worker_id: str, percent: int, stage: str, message: str) -> None:
        self.handle.update_progress.remote(job_id, worker_id, percent, stage, message)

    def acknowledge(self, method: str, job_id: str, *args: Any) -> None:
        getattr(self.handle, method).remote(job_id, *args).result()


class DirectWorkerLedger(WorkerLedger):
    """Straight to a shared store (Redis mode): idle workers wait on its queue channel."""

    def __init__(self, store: Any):
        self.store = store
        self._progress = ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress")

    def lease_wait(self, worker_id: str, lease_s: float, wait_s: float) -> JobRecord | None:
        """Lease the next job, waiting up to ``wait_s`` for one to be queued or for a retry's
        backoff (or a dead worker's lease) to run out; None if none came."""
        deadline = time.monotonic() + wait_s
        with self.store.queue_wakeups() as woken:  # subscribed before looking: no wake-up is lost
            while True:
                self.store.mark_worker_seen(worker_id)
                job: JobRecord | None = self.store.lease(worker_id, lease_s)
                remaining = deadline - time.monotonic()
                if job is not None or remaining <= 0:
                    return job
                ready_at = self.store.next_ready_at()
                if ready_at is not None:
                    remaining = min(remaining, max(0.01, ready_at - self.store.clock()))
                woken(remaining)

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> HeartbeatReply:
        self.store.mark_worker_seen(worker_id)
        reply: HeartbeatReply = self.store.heartbeat(job_id, worker_id, lease_s)
        return reply

    def progress(self, job_id: str, worker_id: str, percent: int, stage: str, message: str) -> None:
        def send() -> None:
            try:
                self.store.update_progress(job_id, worker_id, percent, stage, message)
            except Exception:  # a progress report may be lost; the next one, or the result, carries on
                log.debug("progress report lost", exc_info=True)

        self._progress.submit(send)

    def acknowledge(self, method: str, job_id: str, *args: Any) -> None:
        getattr(self.store, method)(job_id, *args)


# -- the ingress's side (asynchronous: FastAPI routes) -------------------------------------------


class IngressLedger:
    """What the ingress asks of the ledger; every method is a coroutine."""

    async def call(self, method: str, *args: Any) -> Any:
        raise NotImplementedError

    async def workers(self) -> list[dict]:
        raise NotImplementedError

    def follow(self, job_id: str, after_seq: int, heartbeat_s: float) -> AsyncIterator[dict[str, Any] | None]:
        """The job's WebSocket messages after ``after_seq`` (each with its ``seq``), None after
        ``heartbeat_s`` without one."""
        raise NotImplementedError


class ActorIngressLedger(IngressLedger):
    """Through the Ledger deployment's handle (SQLite mode): WebSockets long-poll ``events_wait``."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def call(self, method: str, *args: Any) -> Any:
        return await getattr(self.handle, method).remote(*args)

    async def workers(self) -> list[dict]:
        result: list[dict] = await self.handle.workers.remote()
        return result

    async def follow(self, job_id: str, after_seq: int, heartbeat_s: float) -> AsyncIterator[dict[str, Any] | None]:
        seq = after_seq
        while True:
            events = await self.handle.events_wait.remote(job_id, seq, heartbeat_s)
            if not events:
                yield None
            for event in events:
                seq = event.seq
                yield {"seq": event.seq, **event_message(job_id, event)}


class DirectIngressLedger(IngressLedger):
    """Straight to Redis: any replica answers for any job, and streams it from pub/sub."""

    def __init__(self, store: Any, config: ServiceConfig):
        self.store = store
        self.config = config

    async def call(self, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(self.store, method), *args)

    async def workers(self) -> list[dict]:
        def read() -> list[dict]:
            seen = self.store.workers_seen(forget_after_s=10 * self.config.lease_s)
            running = self.store.list_jobs(JobStatus.RUNNING, 1000)
            return worker_slots(running, seen, self.config, self.store.clock())

        return await asyncio.to_thread(read)

    def follow(self, job_id: str, after_seq: int, heartbeat_s: float) -> AsyncIterator[dict[str, Any] | None]:
        stream: AsyncIterator[dict[str, Any] | None] = self.store.follow(job_id, after_seq, heartbeat_s)
        return stream


def ingress_ledger(config: ServiceConfig, handle: Any) -> IngressLedger:
    if ledger_kind(config.ledger_url) == "redis":
        return DirectIngressLedger(open_store(config, on_transition=record_transition), config)
    return ActorIngressLedger(handle)


def worker_ledger(config: ServiceConfig, handle: Any) -> WorkerLedger:
    if ledger_kind(config.ledger_url) == "redis":
        return DirectWorkerLedger(open_store(config, on_transition=record_transition))
    return ActorWorkerLedger(handle)
