"""The durable job ledger and priority queue (pure Python + sqlite3, no Ray).

This replaces the Redis pieces of the job design the service implements (docs/architecture.md,
"the job-processing design") with one store:

* the ``job:{id}`` hash -> a row in ``jobs`` (:class:`JobRecord`);
* the ``job:{id}:updates`` pub/sub channel -> an ordered per-job event log
  (:class:`JobEvent`) that clients read with ``events(job_id, after_seq)``, so a
  client that reconnects misses nothing (pub/sub drops messages nobody hears);
* the broker's ``high_priority``/``default`` queues, ``acks_late``, retries with
  exponential backoff and result expiry -> :meth:`JobStore.lease`,
  :meth:`JobStore.requeue_expired`, :meth:`JobStore.fail` and :meth:`JobStore.expire`.

Work is handed out as *leases* rather than deliveries: a worker leases a job for
``lease_s`` seconds, keeps it alive with :meth:`JobStore.heartbeat`, and the job
goes back to the queue if the lease runs out. That is ``acks_late`` without a
broker: a job survives a dead worker, and only the lease holder may report
progress, completion or failure, so a worker that was presumed dead cannot
overwrite the work of the one that took its job over.

:class:`JobStore` is the interface, as a protocol of what the ledger deployment calls (a
Redis backend can implement it later); :class:`SQLiteJobStore` is the implementation. It is owned by a Ray actor
that Ray restarts, so it is written to survive the process dying at any
instant:

* SQLite in WAL mode on a file; every state change is exactly one transaction,
  and every write transaction starts with ``BEGIN IMMEDIATE`` so that
  read-then-write sequences (dedup on submit, leasing) take the database write
  lock *before* reading. Correctness therefore comes from SQLite's file locks,
  not from an in-process lock, and holds across threads and processes that open
  the same file (the per-instance ``threading.RLock`` only serialises use of the
  one ``sqlite3.Connection`` an instance owns).
* ``synchronous=FULL``: in WAL mode NORMAL already survives a *process* crash
  (committed pages are in the OS page cache), but can lose the last commits on a
  power failure or kernel crash. A submit that returned a job id to a client
  must not vanish, and the write rate here is tiny (a handful of commits per job
  per second at most), so the extra fsync per commit is worth it.
* ``busy_timeout`` (30 s) makes contending writers wait for the lock instead of
  failing at once.
* the submission order is an ``AUTOINCREMENT`` integer, so FIFO does not depend
  on float clocks (which can tie or step backwards) and ids are never reused
  even after :meth:`JobStore.expire` deletes the newest rows.

WAL needs a local filesystem (not NFS). Do not share one instance across
``fork``; open a new store in the child.

All times are float epoch seconds from the injectable ``clock``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from rescored_ray.errors import RateLimited
from rescored_ray.retry import backoff_delay

__all__ = [
    "PRIORITIES",
    "Attempt",
    "ClientLimits",
    "HeartbeatReply",
    "JobEvent",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "Priority",
    "RateLimited",
    "SQLiteJobStore",
    "dedup_key",
    "event_message",
    "iso_time",
    "validate_priority",
]


class JobStatus(str, Enum):
    """Lifecycle: queued -> running -> completed | failed | cancelled (running may go back to queued)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


Priority = Literal["high", "default"]
PRIORITIES: tuple[str, ...] = ("high", "default")
_PRIORITY_RANK = {"high": 0, "default": 1}  # lower rank leases first


def validate_priority(priority: str) -> str:
    """Return ``priority`` if it is ``"high"`` or ``"default"``; anything else is a ValueError."""
    if not isinstance(priority, str) or priority not in _PRIORITY_RANK:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    return priority


AttemptOutcome = Literal["completed", "failed", "retrying", "lease_expired", "cancelled"]
EventType = Literal["queued", "progress", "retrying", "completed", "error", "cancelled"]


@dataclass
class Attempt:
    """One lease of a job by a worker; ``outcome`` is None while it runs.

    ``stage`` is the last pipeline stage the worker reported in this attempt, so a
    failure history says where each try stopped.
    """

    number: int
    worker: str
    started_at: float
    ended_at: float | None = None
    outcome: AttemptOutcome | None = None
    error: dict | None = None
    stage: str | None = None
    timeline: list[dict] | None = None
    """The stages this attempt ran: start/end times and the workers (see
    :mod:`rescored_ray.timeline`), as reported by the worker when it ended the attempt."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Attempt:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


@dataclass
class JobRecord:
    """The design's ``job:{id}`` hash (docs/architecture.md), as one typed record."""

    job_id: str
    source: str
    dedup_key: str
    options: dict
    priority: str
    status: JobStatus
    progress: int = 0
    current_stage: str | None = None
    status_message: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    cancelled_at: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    max_attempts: int = 1
    not_before: float = 0.0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    error: dict | None = None
    result: dict | None = None
    expires_at: float | None = None
    client_id: str | None = None
    """Who submitted it (the API token's client, else the caller's address); limits and,
    with per-client tokens, access are per client."""
    last_event_seq: int = 0
    """Seq of the newest event when this record was read: a stream that starts from this
    state continues with ``events(job_id, last_event_seq)`` and misses nothing."""

    def to_dict(self) -> dict:
        """JSON-safe dict (status as its string value, attempts as dicts)."""
        d = asdict(self)
        d["status"] = self.status.value
        return d


@dataclass
class JobEvent:
    """One message of the ``job:{id}:updates`` channel; ``seq`` strictly increases per job."""

    job_id: str
    seq: int
    type: EventType
    data: dict
    at: float

    def to_dict(self) -> dict:
        return asdict(self)


API_PREFIX = "/api/v1"


def iso_time(ts: float | None) -> str | None:
    """Epoch seconds as the API writes times (ISO 8601, UTC); None stays None."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else None


def event_message(job_id: str, event: JobEvent) -> dict[str, Any]:
    """A ledger event as the design's WebSocket message (docs/api.md): what the WebSocket sends,
    and what a Redis ledger publishes on ``job:{id}:updates`` (with the event's ``seq``)."""
    message: dict[str, Any] = {"type": event.type, "job_id": job_id, "timestamp": iso_time(event.at)}
    data = event.data or {}
    if event.type == "progress":
        message.update(progress=data.get("progress"), stage=data.get("stage"), message=data.get("message"))
    elif event.type == "completed":
        message["result_url"] = f"{API_PREFIX}/scores/{job_id}"
    elif event.type in ("error", "retrying"):
        message["error"] = data.get("error")
        if event.type == "retrying":
            message.update(retry_in_s=data.get("retry_in_s"), attempt=data.get("attempt"))
    return message


@dataclass(frozen=True)
class ClientLimits:
    """What one client may have: new jobs per window, and jobs queued or running at once.
    None switches a limit off. Deduplicated submissions (no new work) never count."""

    jobs_per_window: int | None = 10
    window_s: float = 3600.0
    max_active: int | None = 4


@dataclass(frozen=True)
class HeartbeatReply:
    """``ok``: the caller still holds the lease (now extended). ``cancel_requested``: stop and call mark_cancelled."""

    ok: bool
    cancel_requested: bool


def dedup_key(source_key: str, options: Mapping[str, Any]) -> str:
    """sha256 over the source key and the canonical JSON of the options (sorted keys).

    Two submissions of the same song with the same options (in any key order)
    get the same key, so the second one joins the first job instead of
    transcribing again.
    """
    canonical = json.dumps(dict(options), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    h = hashlib.sha256()
    h.update(source_key.encode("utf-8"))
    h.update(b"\x00")
    h.update(canonical.encode("utf-8"))
    return h.hexdigest()


@runtime_checkable
class JobStore(Protocol):
    """The ledger interface the Serve app talks to; backends: SQLite now, Redis later.

    Worker-side calls (``heartbeat``, ``update_progress``, ``complete``, ``fail``,
    ``mark_cancelled``) take the ``worker_id`` that leased the job and do nothing
    (False/None/ok=False) unless that worker still holds the lease.
    """

    def submit(
        self,
        source: str,
        dedup_key: str,
        options: dict,
        priority: str = "default",
        client_id: str | None = None,
        limits: ClientLimits | None = None,
    ) -> tuple[JobRecord, bool]:
        """Queue a job, or return the live job with the same dedup_key and True; a new job
        over the client's limits raises :class:`RateLimited`."""

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if unknown or expired."""

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 100, client_id: str | None = None
    ) -> list[JobRecord]:
        """Jobs newest first, optionally of one status and/or one client."""

    def lease(self, worker_id: str, lease_s: float) -> JobRecord | None:
        """Re-queue expired leases, then take the next runnable job (high first, FIFO) or None."""

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> HeartbeatReply:
        """Extend the caller's lease; says whether it still holds it and whether cancel was asked."""

    def update_progress(
        self, job_id: str, worker_id: str, percent: int, stage: str | None, message: str | None
    ) -> bool:
        """Record progress (never backwards within an attempt) and emit a progress event."""

    def complete(self, job_id: str, worker_id: str, result: dict, timeline: list[dict] | None = None) -> bool:
        """Finish the job with ``result``; it expires after the result TTL. ``timeline`` (the
        attempt's stage spans) is kept on the attempt, for this and the calls below."""

    def fail(
        self,
        job_id: str,
        worker_id: str,
        error: dict | BaseException,
        retryable: bool,
        timeline: list[dict] | None = None,
    ) -> JobRecord | None:
        """Re-queue with backoff if retryable and attempts remain, else fail the job."""

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job now, or ask the worker of a running one to stop."""

    def mark_cancelled(self, job_id: str, worker_id: str, timeline: list[dict] | None = None) -> bool:
        """The lease holder acknowledges a cancel request: the job becomes cancelled."""

    def requeue_expired(self) -> list[str]:
        """Take back every running job whose lease ran out; returns their ids."""

    def expire(self) -> list[JobRecord]:
        """Delete jobs past their ``expires_at`` (and their events); returns them for file cleanup."""

    def events(self, job_id: str, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        """The job's events with seq > after_seq, in order."""

    def queue_stats(self) -> dict:
        """Counts: {"queued": {"high": n, "default": n}, "running": n, "completed": n, ...}."""

    def close(self) -> None:
        """Release the backend's resources; idempotent."""

    def next_ready_at(self) -> float | None:
        """When a job may next become leasable without a new submission (a retry's backoff ends,
        a lease expires); None if neither is pending."""


# --------------------------------------------------------------------------- SQLite

_SCHEMA_VERSION = 2
_MIGRATIONS = {  # from version -> statements that bring it to version + 1
    1: ["ALTER TABLE jobs ADD COLUMN client_id TEXT"],
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           TEXT NOT NULL UNIQUE,
    source           TEXT NOT NULL,
    dedup_key        TEXT NOT NULL,
    options          TEXT NOT NULL,
    priority         TEXT NOT NULL,
    priority_rank    INTEGER NOT NULL,
    status           TEXT NOT NULL,
    progress         INTEGER NOT NULL DEFAULT 0,
    current_stage    TEXT,
    status_message   TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    started_at       REAL,
    completed_at     REAL,
    failed_at        REAL,
    cancelled_at     REAL,
    attempts         TEXT NOT NULL DEFAULT '[]',
    max_attempts     INTEGER NOT NULL,
    not_before       REAL NOT NULL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    result           TEXT,
    expires_at       REAL,
    event_seq        INTEGER NOT NULL DEFAULT 0,
    client_id        TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue   ON jobs(status, priority_rank, seq);
CREATE INDEX IF NOT EXISTS jobs_dedup   ON jobs(dedup_key, status);
CREATE INDEX IF NOT EXISTS jobs_lease   ON jobs(status, lease_expires_at);
CREATE INDEX IF NOT EXISTS jobs_expires ON jobs(expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_client  ON jobs(client_id, created_at) WHERE client_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    type   TEXT NOT NULL,
    data   TEXT NOT NULL,
    at     REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""

_BUSY_TIMEOUT_MS = 30_000
_SYNCHRONOUS = "FULL"  # see the module docstring


def _dumps(obj: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON, and these blobs go to HTTP clients.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class LedgerPolicy:
    """What every job store does to a job, whatever stores it: the one copy of the rules.

    A backend reads the job(s) a change needs inside its own atomic unit (a SQLite write
    transaction, a Redis WATCH/MULTI), calls one ``_apply_*`` method here, which changes the
    in-memory :class:`JobRecord` and writes it back through the backend's ``_save`` and
    ``_emit``, and commits. So SQLite and Redis cannot drift apart on what a lease, a retry,
    a lost worker or a cancel means; only on how they keep it.

    Retries: a job gets ``max_attempts = 1 + max_retries`` attempts. A retryable
    failure of attempt ``n`` re-queues the job with ``not_before = now +
    min(backoff_max_s, backoff_base_s * 2**(n-1))`` (1 s, 2 s, 4 s, ...).

    Lost leases (the worker died or stalled; see :meth:`JobStore.requeue_expired`) *do*
    count as attempts, so a job that keeps crashing its workers cannot loop
    forever, but a job is never failed *because of* a lost lease until it has had
    ``max_attempts + 1`` attempts in all: a worker crash is usually the
    platform's fault (preemption, actor restart), so it gets one extra try
    beyond the normal budget. It then fails with "worker lost repeatedly". A
    re-queued lost job gets no extra backoff: the lease timeout already delayed it.
    """

    def __init__(
        self,
        *,
        max_retries: int = 3,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 600.0,
        failed_ttl_s: float = 86400,
        result_ttl_s: float = 30 * 86400,
        clock: Callable[[], float] = time.time,
        on_transition: Callable[[str, JobRecord, dict], None] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("backoff must be >= 0")
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.failed_ttl_s = float(failed_ttl_s)
        self.result_ttl_s = float(result_ttl_s)
        self.clock = clock
        self.on_transition = on_transition
        self._local = threading.local()  # transitions of the change in progress, per thread

    @property
    def _pending(self) -> list[tuple[str, JobRecord, dict]]:
        pending: list[tuple[str, JobRecord, dict]] | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending

    # what a backend provides
    def _save(self, tx: Any, job: JobRecord) -> None:
        """Write every mutable field of ``job`` back, inside the backend's atomic unit ``tx``."""
        raise NotImplementedError

    def _emit(self, tx: Any, job_id: str, type_: str, data: dict, now: float) -> int:
        """Append the job's next event inside ``tx``; returns its seq."""
        raise NotImplementedError

    def _notify(self, kind: str, job: JobRecord, **info: Any) -> None:
        """Queue a transition for ``on_transition``; it is announced only once the transaction commits."""
        if self.on_transition is not None:
            self._pending.append((kind, job, info))

    def _announce(self) -> None:
        pending = list(self._pending)
        self._pending.clear()
        for kind, job, info in pending:
            with contextlib.suppress(Exception):  # metrics and logs must never undo a committed state change
                self.on_transition(kind, job, info)  # type: ignore[misc]

    @staticmethod
    def _held(job: JobRecord | None, worker_id: str) -> bool:
        """The lease is held until another call takes it back (requeue_expired) or the job ends.

        A late heartbeat or report from the holder that arrives after
        ``lease_expires_at`` but before anyone re-queued the job still counts:
        nobody else can hold the job then, so accepting it loses nothing.
        """
        return job is not None and job.status is JobStatus.RUNNING and job.lease_owner == worker_id

    def _backoff(self, attempt_number: int) -> float:
        return backoff_delay(attempt_number, self.backoff_base_s, self.backoff_max_s)

    @staticmethod
    def _end_attempt(
        job: JobRecord, now: float, outcome: str, error: dict | None = None, timeline: list[dict] | None = None
    ) -> None:
        if job.attempts and job.attempts[-1].outcome is None:
            a = job.attempts[-1]
            a.ended_at = now
            a.outcome = outcome  # type: ignore[assignment]
            a.error = error
            a.stage = job.current_stage
            if timeline is not None:
                a.timeline = list(timeline)

    @staticmethod
    def _clear_lease(job: JobRecord) -> None:
        job.lease_owner = None
        job.lease_expires_at = None

    def _to_cancelled(self, tx: Any, job: JobRecord, now: float, reason: str) -> None:
        job.status = JobStatus.CANCELLED
        job.cancelled_at = now
        job.updated_at = now
        job.expires_at = now + self.failed_ttl_s
        job.status_message = reason
        self._clear_lease(job)
        self._save(tx, job)
        self._emit(tx, job.job_id, "cancelled", {"reason": reason}, now)
        self._notify("cancelled", job)

    def _to_failed(self, tx: Any, job: JobRecord, now: float, error: dict) -> None:
        job.status = JobStatus.FAILED
        job.failed_at = now
        job.updated_at = now
        job.error = error
        job.expires_at = now + self.failed_ttl_s
        job.status_message = error.get("message")
        self._clear_lease(job)
        self._save(tx, job)
        self._emit(tx, job.job_id, "error", {"error": error}, now)
        self._notify("failed", job, error=error)

    @staticmethod
    def _normalize_error(error: Any, retryable: bool, stage: str | None) -> dict:
        """Coerce to {type, message, stage, retryable, ...}; accepts a dict or a PipelineError."""
        if isinstance(error, BaseException):
            d = (
                dict(error.to_dict())
                if hasattr(error, "to_dict")
                else {
                    "type": type(error).__name__,
                    "message": str(error),
                }
            )
        elif isinstance(error, Mapping):
            d = dict(error)
        else:
            d = {"message": str(error)}
        d.setdefault("type", "Error")
        d["message"] = str(d.get("message", ""))
        if not d.get("stage"):
            d["stage"] = stage or "pipeline"
        d["retryable"] = bool(retryable)
        return d

    # ------------------------------------------------------------------ the rules of each change

    def _apply_lease(self, tx: Any, job: JobRecord, worker_id: str, lease_s: float, now: float) -> JobRecord:
        """``job`` (queued and ready) becomes the caller's: a new attempt; progress restarts at 0."""
        job.status = JobStatus.RUNNING
        job.lease_owner = worker_id
        job.lease_expires_at = now + lease_s
        if job.started_at is None:
            job.started_at = now
        job.updated_at = now
        job.progress = 0
        job.current_stage = None
        job.attempts.append(Attempt(number=len(job.attempts) + 1, worker=worker_id, started_at=now))
        job.status_message = f"attempt {len(job.attempts)} running"
        self._save(tx, job)
        self._notify("leased", job, waited_s=now - job.created_at if len(job.attempts) == 1 else None)
        return job

    def _apply_progress(
        self, tx: Any, job: JobRecord, percent: int, stage: str | None, message: str | None, now: float
    ) -> bool:
        """Clamp to 0-100; emit "progress". An update below the attempt's current progress is
        an older one arriving late (workers send progress without waiting): it is dropped."""
        if int(percent) < job.progress:
            return True
        pct = max(job.progress, min(100, max(0, int(percent))))
        job.progress = pct
        if stage is not None:
            job.current_stage = stage
        if message is not None:
            job.status_message = message
        if job.attempts:
            job.attempts[-1].stage = job.current_stage
        job.updated_at = now
        self._save(tx, job)
        self._emit(tx, job.job_id, "progress", {"progress": pct, "stage": job.current_stage, "message": message}, now)
        return True

    def _apply_complete(self, tx: Any, job: JobRecord, result: dict, timeline: list[dict] | None, now: float) -> bool:
        """Complete the job. Its stream reads 100 % before "completed" even when the worker's
        last report (fire and forget) arrives after the acknowledgement and is dropped."""
        if job.progress < 100:
            done = {"progress": 100, "stage": "musicxml", "message": "Transcription complete"}
            self._emit(tx, job.job_id, "progress", done, now)
        self._end_attempt(job, now, "completed", timeline=timeline)
        job.status = JobStatus.COMPLETED
        job.progress = 100
        job.result = result
        job.error = None
        job.completed_at = now
        job.updated_at = now
        job.expires_at = now + self.result_ttl_s
        job.status_message = "completed"
        self._clear_lease(job)
        self._save(tx, job)
        self._emit(tx, job.job_id, "completed", {"result": result}, now)
        self._notify("completed", job)
        return True

    def _apply_fail(
        self,
        tx: Any,
        job: JobRecord,
        error: dict | BaseException,
        retryable: bool,
        timeline: list[dict] | None,
        now: float,
    ) -> JobRecord:
        """Retry with exponential backoff while attempts remain, else fail for good.

        "Attempts used" is the number of attempts so far, including lost leases.
        If a cancel was requested, a retryable failure is not retried: the job is
        cancelled instead.
        """
        err = self._normalize_error(error, retryable, job.current_stage)
        n = len(job.attempts)
        if retryable and job.cancel_requested:
            self._end_attempt(job, now, "cancelled", err, timeline)
            self._to_cancelled(tx, job, now, "cancelled (failed after cancel was requested)")
        elif retryable and n < job.max_attempts:
            delay = self._backoff(n)
            self._end_attempt(job, now, "retrying", err, timeline)
            job.status = JobStatus.QUEUED
            job.not_before = now + delay
            job.updated_at = now
            job.status_message = f"attempt {n} failed, retrying in {delay:g} s: {err['message']}"
            self._clear_lease(job)
            self._save(tx, job)
            self._emit(tx, job.job_id, "retrying", {"error": err, "retry_in_s": delay, "attempt": n}, now)
            self._notify("retrying", job, error=err, reason="error")
        else:
            self._end_attempt(job, now, "failed", err, timeline)
            self._to_failed(tx, job, now, err)
        return job

    def _apply_cancel(self, tx: Any, job: JobRecord, now: float) -> JobRecord:
        """A queued job is cancelled now; a running one is asked to stop (its heartbeat says so)."""
        if job.status is JobStatus.QUEUED:
            self._to_cancelled(tx, job, now, "cancelled")
        elif job.status is JobStatus.RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            job.updated_at = now
            job.status_message = "cancel requested"
            self._save(tx, job)
        return job

    def _apply_mark_cancelled(self, tx: Any, job: JobRecord, timeline: list[dict] | None, now: float) -> bool:
        self._end_attempt(job, now, "cancelled", timeline=timeline)
        self._to_cancelled(tx, job, now, "cancelled")
        return True

    def _apply_take_back(self, tx: Any, job: JobRecord, now: float) -> None:
        """A running job whose lease ran out (acks_late: the job outlives its worker).

        The current attempt is closed as "lease_expired". The job goes back to
        the queue at once, unless a cancel was requested (-> cancelled) or it has
        already had ``max_attempts + 1`` attempts (-> failed, "worker lost repeatedly").
        """
        n = len(job.attempts)
        err = {
            "type": "LeaseExpired",
            "message": f"worker {job.lease_owner} lost its lease (no heartbeat)",
            "stage": job.current_stage or "pipeline",
            "retryable": True,
        }
        self._end_attempt(job, now, "lease_expired", err)
        if job.cancel_requested:
            self._to_cancelled(tx, job, now, "cancelled (worker lost after cancel was requested)")
        elif n >= job.max_attempts + 1:
            self._to_failed(
                tx,
                job,
                now,
                {
                    "type": "WorkerLost",
                    "message": "worker lost repeatedly",
                    "stage": job.current_stage or "pipeline",
                    "retryable": False,
                },
            )
        else:
            job.status = JobStatus.QUEUED
            job.not_before = now
            job.updated_at = now
            job.status_message = f"attempt {n}: worker lost, re-queued"
            self._clear_lease(job)
            self._save(tx, job)
            self._emit(tx, job.job_id, "retrying", {"error": err, "retry_in_s": 0.0, "attempt": n}, now)
            self._notify("retrying", job, error=err, reason="lease_expired")


class SQLiteJobStore(LedgerPolicy):
    """:class:`JobStore` on one SQLite file in WAL mode (see the module docstring); the rules
    of every change are :class:`LedgerPolicy`'s."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_retries: int = 3,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 600.0,
        failed_ttl_s: float = 86400,
        result_ttl_s: float = 30 * 86400,
        clock: Callable[[], float] = time.time,
        on_transition: Callable[[str, JobRecord, dict], None] | None = None,
    ) -> None:
        super().__init__(
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            failed_ttl_s=failed_ttl_s,
            result_ttl_s=result_ttl_s,
            clock=clock,
            on_transition=on_transition,
        )
        self.path = Path(path)
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = self._connect()

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE/COMMIT ourselves.
        conn = sqlite3.connect(
            str(self.path),
            timeout=_BUSY_TIMEOUT_MS / 1000.0,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            # Switching to WAL needs an exclusive lock once per file; another process
            # opening the file at the same moment can make it report "locked".
            deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000.0
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            if str(mode).lower() != "wal":
                raise RuntimeError(f"could not put {self.path} in WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > _SCHEMA_VERSION:
                    raise RuntimeError(f"{self.path}: ledger schema v{version}, this code knows v{_SCHEMA_VERSION}")
                existing = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone()
                if existing is not None:  # an older ledger: migrate it in this same transaction
                    for from_version in range(max(version, 1), _SCHEMA_VERSION):
                        for stmt in _MIGRATIONS[from_version]:
                            conn.execute(stmt)
                # executescript() would COMMIT first; run the statements one by one instead.
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SQLiteJobStore is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, float]]:
        """One write transaction; takes the write lock before reading anything.

        Yields the connection and ``now`` read *after* the lock is held, so times
        written by contending processes follow the order of their commits.
        """
        with self._lock:
            conn = self._require_conn()
            conn.execute("BEGIN IMMEDIATE")
            self._pending.clear()
            try:
                yield conn, float(self.clock())
            except BaseException:
                self._pending.clear()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                self._pending.clear()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._announce()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Reads run in autocommit: each statement sees one consistent snapshot."""
        with self._lock:
            yield self._require_conn()

    @staticmethod
    def _record(row: sqlite3.Row) -> JobRecord:
        return JobRecord(
            job_id=row["job_id"],
            source=row["source"],
            dedup_key=row["dedup_key"],
            options=_loads(row["options"]),
            priority=row["priority"],
            status=JobStatus(row["status"]),
            progress=int(row["progress"]),
            current_stage=row["current_stage"],
            status_message=row["status_message"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            failed_at=row["failed_at"],
            cancelled_at=row["cancelled_at"],
            attempts=[Attempt.from_dict(a) for a in _loads(row["attempts"])],
            max_attempts=int(row["max_attempts"]),
            not_before=row["not_before"],
            lease_owner=row["lease_owner"],
            lease_expires_at=row["lease_expires_at"],
            cancel_requested=bool(row["cancel_requested"]),
            error=_loads(row["error"]),
            result=_loads(row["result"]),
            expires_at=row["expires_at"],
            client_id=row["client_id"],
            last_event_seq=int(row["event_seq"]),
        )

    @staticmethod
    def _fetch(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else SQLiteJobStore._record(row)

    @staticmethod
    def _save(conn: sqlite3.Connection, job: JobRecord) -> None:
        """Write every mutable field of ``job`` back (inside the caller's transaction)."""
        conn.execute(
            """UPDATE jobs SET
                priority = ?, priority_rank = ?, status = ?, progress = ?, current_stage = ?,
                status_message = ?, updated_at = ?, started_at = ?, completed_at = ?,
                failed_at = ?, cancelled_at = ?, attempts = ?, not_before = ?, lease_owner = ?,
                lease_expires_at = ?, cancel_requested = ?, error = ?, result = ?, expires_at = ?
               WHERE job_id = ?""",
            (
                job.priority,
                _PRIORITY_RANK[job.priority],
                job.status.value,
                int(job.progress),
                job.current_stage,
                job.status_message,
                job.updated_at,
                job.started_at,
                job.completed_at,
                job.failed_at,
                job.cancelled_at,
                _dumps([a.to_dict() for a in job.attempts]),
                job.not_before,
                job.lease_owner,
                job.lease_expires_at,
                int(job.cancel_requested),
                None if job.error is None else _dumps(job.error),
                None if job.result is None else _dumps(job.result),
                job.expires_at,
                job.job_id,
            ),
        )

    @staticmethod
    def _emit(conn: sqlite3.Connection, job_id: str, type_: str, data: dict, now: float) -> int:
        """Append an event in the caller's transaction; the per-job counter lives on the job row."""
        # No RETURNING: keep working on SQLite < 3.35.
        conn.execute("UPDATE jobs SET event_seq = event_seq + 1 WHERE job_id = ?", (job_id,))
        seq = conn.execute("SELECT event_seq FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0]
        conn.execute(
            "INSERT INTO events (job_id, seq, type, data, at) VALUES (?, ?, ?, ?, ?)",
            (job_id, seq, type_, _dumps(data), now),
        )
        return int(seq)

    # ------------------------------------------------------------------ JobStore

    def submit(
        self,
        source: str,
        dedup_key: str,
        options: dict,
        priority: str = "default",
        client_id: str | None = None,
        limits: ClientLimits | None = None,
    ) -> tuple[JobRecord, bool]:
        """Dedup against a queued/running (not cancel-requested) or unexpired completed job.

        Failed, cancelled and expired jobs do not dedup: resubmitting them is how a
        user retries. A running job whose cancel was requested does not dedup either.
        A new job of ``client_id`` over its ``limits`` raises :class:`RateLimited`; the check
        and the insert share one transaction, so concurrent submissions cannot overshoot.
        """
        validate_priority(priority)
        if not isinstance(source, str) or not source:
            raise ValueError("source must be a non-empty string")
        if not isinstance(dedup_key, str) or not dedup_key:
            raise ValueError("dedup_key must be a non-empty string")
        options = dict(options or {})
        options_json = _dumps(options)  # fail before opening a transaction
        with self._write() as (conn, now):
            row = conn.execute(
                """SELECT * FROM jobs
                   WHERE dedup_key = ?
                     AND ((status IN ('queued', 'running') AND cancel_requested = 0)
                          OR (status = 'completed' AND (expires_at IS NULL OR expires_at >= ?)))
                   ORDER BY seq DESC LIMIT 1""",
                (dedup_key, now),
            ).fetchone()
            if row is not None:
                job = self._record(row)
                self._notify("submitted", job, deduplicated=True)
                return job, True
            if limits is not None and client_id is not None:
                self._check_limits(conn, client_id, limits, now)
            # 128 random bits as hex: unguessable, and safe everywhere an id travels (a URL, a
            # file name, a CLI argument: a urlsafe token may start with "-" and read as an option)
            job_id = secrets.token_hex(16)
            max_attempts = 1 + self.max_retries
            conn.execute(
                """INSERT INTO jobs (job_id, source, dedup_key, options, priority, priority_rank,
                                     status, created_at, updated_at, max_attempts, not_before,
                                     status_message, client_id)
                   VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, 'queued', ?)""",
                (
                    job_id,
                    source,
                    dedup_key,
                    options_json,
                    priority,
                    _PRIORITY_RANK[priority],
                    now,
                    now,
                    max_attempts,
                    now,
                    client_id,
                ),
            )
            self._emit(conn, job_id, "queued", {"priority": priority, "source": source}, now)
            created = self._fetch(conn, job_id)
            assert created is not None
            self._notify("submitted", created, deduplicated=False)
            return created, False

    @staticmethod
    def _check_limits(conn: sqlite3.Connection, client_id: str, limits: ClientLimits, now: float) -> None:
        if limits.max_active is not None:
            active = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE client_id = ? AND status IN ('queued', 'running')", (client_id,)
            ).fetchone()[0]
            if active >= limits.max_active:
                raise RateLimited(
                    f"{active} jobs of this client are queued or running (limit "
                    f"{limits.max_active}); wait for one to finish",
                    retry_after_s=30.0,
                )
        if limits.jobs_per_window is not None:
            since = now - limits.window_s
            rows = conn.execute(
                "SELECT created_at FROM jobs WHERE client_id = ? AND created_at > ? ORDER BY created_at LIMIT ?",
                (client_id, since, limits.jobs_per_window),
            ).fetchall()
            if len(rows) >= limits.jobs_per_window:
                retry_after = rows[0]["created_at"] + limits.window_s - now
                raise RateLimited(
                    f"rate limit: {limits.jobs_per_window} new jobs per {limits.window_s:g} s",
                    retry_after_s=max(1.0, retry_after),
                )

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as conn:
            return self._fetch(conn, job_id)

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 100, client_id: str | None = None
    ) -> list[JobRecord]:
        """Newest first; of one status and/or one client when given."""
        limit = max(0, int(limit))
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(JobStatus(status).value)
        if client_id is not None:
            where.append("client_id = ?")
            args.append(client_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._read() as conn:
            rows = conn.execute(f"SELECT * FROM jobs {clause} ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
        return [self._record(r) for r in rows]

    def lease(self, worker_id: str, lease_s: float) -> JobRecord | None:
        """Atomically take the next job: high before default, FIFO by submission sequence.

        Runs inside one ``BEGIN IMMEDIATE`` transaction, so two leasers in any
        threads or processes can never take the same job. Expired leases are
        re-queued first, in the same transaction. Progress restarts at 0 for the
        new attempt.
        """
        if not worker_id:
            raise ValueError("worker_id must be non-empty")
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        with self._write() as (conn, now):
            self._requeue_expired_tx(conn, now)
            row = conn.execute(
                """SELECT * FROM jobs WHERE status = 'queued' AND not_before <= ?
                   ORDER BY priority_rank, seq LIMIT 1""",
                (now,),
            ).fetchone()
            if row is None:
                return None
            return self._apply_lease(conn, self._record(row), worker_id, lease_s, now)

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> HeartbeatReply:
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        with self._write() as (conn, now):
            job = self._fetch(conn, job_id)
            if not self._held(job, worker_id):
                return HeartbeatReply(ok=False, cancel_requested=bool(job and job.cancel_requested))
            assert job is not None
            conn.execute(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE job_id = ?",
                (now + lease_s, now, job_id),
            )
            return HeartbeatReply(ok=True, cancel_requested=job.cancel_requested)

    def update_progress(
        self, job_id: str, worker_id: str, percent: int, stage: str | None, message: str | None
    ) -> bool:
        with self._write() as (conn, now):
            job = self._fetch(conn, job_id)
            if not self._held(job, worker_id):
                return False
            assert job is not None
            return self._apply_progress(conn, job, percent, stage, message, now)

    def complete(self, job_id: str, worker_id: str, result: dict, timeline: list[dict] | None = None) -> bool:
        result = dict(result or {})
        _dumps(result)  # must be JSON: fail before the transaction
        with self._write() as (conn, now):
            job = self._fetch(conn, job_id)
            if not self._held(job, worker_id):
                return False
            assert job is not None
            return self._apply_complete(conn, job, result, timeline, now)

    def fail(
        self,
        job_id: str,
        worker_id: str,
        error: dict | BaseException,
        retryable: bool,
        timeline: list[dict] | None = None,
    ) -> JobRecord | None:
        """See :meth:`LedgerPolicy._apply_fail`."""
        with self._write() as (conn, now):
            job = self._fetch(conn, job_id)
            if not self._held(job, worker_id):
                return None
            assert job is not None
            return self._apply_fail(conn, job, error, retryable, timeline, now)

    def cancel(self, job_id: str) -> JobRecord | None:
        with self._write() as (conn, now):
            job = self._fetch(conn, job_id)
            if job is None:
                return None
            return self._apply_cancel(conn, job, now)

    def mark_cancelled(self, job_id: str, worker_id: str, timeline: list[dict] | None = None) -> bool:
        with self._write() as (conn, now):
            job = self._fetch(conn, job_id)
            if not self._held(job, worker_id):
                return False
            assert job is not None
            return self._apply_mark_cancelled(conn, job, timeline, now)

    def requeue_expired(self) -> list[str]:
        """Take back running jobs whose ``lease_expires_at < now`` (acks_late: the job outlives its worker).

        The current attempt is closed as "lease_expired". The job goes back to
        the queue at once, unless a cancel was requested (-> cancelled) or it has
        already had ``max_attempts + 1`` attempts (-> failed, "worker lost
        repeatedly"). Returns the ids of every job taken back, whatever became of it.
        """
        with self._write() as (conn, now):
            return self._requeue_expired_tx(conn, now)

    def _requeue_expired_tx(self, conn: sqlite3.Connection, now: float) -> list[str]:
        rows = conn.execute(
            "SELECT * FROM jobs WHERE status = 'running' AND lease_expires_at < ? ORDER BY seq",
            (now,),
        ).fetchall()
        ids = []
        for row in rows:
            job = self._record(row)
            self._apply_take_back(conn, job, now)
            ids.append(job.job_id)
        return ids

    def expire(self) -> list[JobRecord]:
        """Delete terminal jobs whose ``expires_at < now`` and their events, in one transaction."""
        with self._write() as (conn, now):
            rows = conn.execute(
                "SELECT * FROM jobs WHERE expires_at IS NOT NULL AND expires_at < ? ORDER BY seq",
                (now,),
            ).fetchall()
            jobs = [self._record(r) for r in rows]
            for job in jobs:
                conn.execute("DELETE FROM events WHERE job_id = ?", (job.job_id,))
                conn.execute("DELETE FROM jobs WHERE job_id = ?", (job.job_id,))
            return jobs

    def events(self, job_id: str, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, int(after_seq), max(0, int(limit))),
            ).fetchall()
        return [JobEvent(r["job_id"], int(r["seq"]), r["type"], _loads(r["data"]), r["at"]) for r in rows]

    def next_ready_at(self) -> float | None:
        """When a job may next become leasable without anyone submitting: the end of a retry's
        backoff, or the expiry of a running job's lease (its worker may be dead). None if neither."""
        with self._read() as conn:
            row = conn.execute(
                """SELECT MIN(t) FROM (SELECT MIN(not_before) AS t FROM jobs WHERE status = 'queued'
                                     UNION ALL
                                     SELECT MIN(lease_expires_at) FROM jobs WHERE status = 'running')"""
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def queue_stats(self) -> dict:
        stats: dict[str, Any] = {"queued": dict.fromkeys(PRIORITIES, 0)}
        for st in JobStatus:
            if st is not JobStatus.QUEUED:
                stats[st.value] = 0
        with self._read() as conn:
            rows = conn.execute("SELECT status, priority, COUNT(*) AS n FROM jobs GROUP BY status, priority").fetchall()
        for r in rows:
            if r["status"] == JobStatus.QUEUED.value:
                stats["queued"][r["priority"]] = stats["queued"].get(r["priority"], 0) + r["n"]
            else:
                stats[r["status"]] = stats.get(r["status"], 0) + r["n"]
        return stats

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    def __enter__(self) -> SQLiteJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
