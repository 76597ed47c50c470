"""The job ledger on Redis: the original design's store, for a service that spans nodes.

Data model (after the Celery design, docs/architecture.md):

* ``job:{id}`` — a hash with every field of :class:`~rescored_ray.service.ledger.JobRecord`
  (strings as they are, numbers as decimal text, ``options``/``attempts``/``error``/``result``
  as JSON; a field that is None is absent), plus ``seq`` (submission order) and
  ``event_seq`` (the newest event's seq).
* ``job:{id}:updates`` — a pub/sub channel carrying exactly the JSON messages the WebSocket
  sends (:func:`~rescored_ray.service.ledger.event_message`), each with its ``seq``; any
  ingress replica on any node can stream any job from it.
* ``job:{id}:events`` — a list, the durable per-job event log (entry ``seq`` at index
  ``seq - 1``). Pub/sub drops messages nobody hears; a client that reconnects, or a
  subscriber that joins late, catches up from here, so nothing is missed.
* ``rescored:*`` — indexes, all sorted sets unless said: ``jobs`` (by seq), ``status:{s}``
  (by seq), ``queued:{priority}`` (by seq: FIFO inside each priority), ``ready_at`` (queued
  jobs by ``not_before``: a retry's backoff), ``running`` (by lease expiry), ``expiring``
  (terminal jobs by ``expires_at``), ``dedup:{key}``, ``client:{c}:jobs`` (by seq),
  ``client:{c}:created`` (by creation time: the rate window), ``client:{c}:active`` (a set:
  queued or running), ``workers`` (worker slots by when they last asked for work), the
  ``seq`` counter and the ``queue`` channel that wakes idle workers.

Every change is one optimistic transaction: WATCH the keys it reads, read, then MULTI/EXEC
its writes; if anyone changed a watched key in between, EXEC does nothing and the change
is computed again. The rules of each change (what a lease, a retry, a lost worker or a
cancel does to a job) are :class:`~rescored_ray.service.ledger.LedgerPolicy`'s, the same
code that :class:`~rescored_ray.service.ledger.SQLiteJobStore` runs, so the two stores keep
the same guarantees (``tests/service/test_ledger.py`` runs one contract suite on both).

Times come from the injectable ``clock`` (the caller's ``time.time``). Lease expiry across
nodes therefore assumes clocks agree to well under a lease (30 s); NTP keeps them within
milliseconds. Durability is Redis's: see docs/operations.md ("The ledger on Redis") for
what ``appendfsync always`` and ``everysec`` can lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import redis
import redis.asyncio as aioredis

from rescored_ray.errors import RateLimited
from rescored_ray.service.ledger import (
    PRIORITIES,
    Attempt,
    ClientLimits,
    HeartbeatReply,
    JobEvent,
    JobRecord,
    JobStatus,
    LedgerPolicy,
    event_message,
    validate_priority,
)

__all__ = ["RedisJobStore", "redis_from_url"]

_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
_PAGE = 64  # queued jobs examined per round trip when the head of a queue is backing off

_STR = {"job_id", "source", "dedup_key", "priority", "current_stage", "status_message", "lease_owner", "client_id"}
_FLOAT = {
    "created_at",
    "updated_at",
    "started_at",
    "completed_at",
    "failed_at",
    "cancelled_at",
    "not_before",
    "lease_expires_at",
    "expires_at",
}
_INT = {"progress", "max_attempts"}
_JSON = {"options", "error", "result"}
_RECORD_FIELDS = [f.name for f in fields(JobRecord) if f.name != "last_event_seq"]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def redis_from_url(url: str) -> redis.Redis:
    """A client for ``redis://host:port/db`` (or ``rediss://``, ``unix://``) that answers strings."""
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30)


def _encode(job: JobRecord) -> tuple[dict[str, str], list[str]]:
    """The hash fields of ``job``, and the names of those that are None (to delete)."""
    mapping: dict[str, str] = {}
    absent: list[str] = []
    for name in _RECORD_FIELDS:
        value = getattr(job, name)
        if name == "status":
            mapping[name] = job.status.value
        elif name == "attempts":
            mapping[name] = _dumps([a.to_dict() for a in job.attempts])
        elif name == "cancel_requested":
            mapping[name] = "1" if value else "0"
        elif value is None:
            absent.append(name)
        elif name in _FLOAT:
            mapping[name] = repr(float(value))
        elif name in _INT:
            mapping[name] = str(int(value))
        elif name in _JSON:
            mapping[name] = _dumps(value)
        else:
            mapping[name] = str(value)
    return mapping, absent


def _decode(h: dict[str, str]) -> JobRecord:
    values: dict[str, Any] = {}
    for name in _RECORD_FIELDS:
        raw = h.get(name)
        if name == "status":
            values[name] = JobStatus(raw)
        elif name == "attempts":
            values[name] = [Attempt.from_dict(a) for a in json.loads(raw or "[]")]
        elif name == "cancel_requested":
            values[name] = raw == "1"
        elif raw is None:
            values[name] = None
        elif name in _FLOAT:
            values[name] = float(raw)
        elif name in _INT:
            values[name] = int(raw)
        elif name in _JSON:
            values[name] = json.loads(raw)
        else:
            values[name] = raw
    for name in ("progress",):
        values[name] = values[name] or 0
    values["not_before"] = values["not_before"] or 0.0
    values["last_event_seq"] = int(h.get("event_seq", 0))
    return JobRecord(**values)


class _Keys:
    def __init__(self, prefix: str):
        self.p = prefix

    def job(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    def updates(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}:updates"

    def events(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}:events"

    def idx(self, name: str) -> str:
        return f"{self.p}rescored:{name}"

    def status(self, status: JobStatus | str) -> str:
        return self.idx(f"status:{JobStatus(status).value}")

    def queued(self, priority: str) -> str:
        return self.idx(f"queued:{priority}")

    def dedup(self, key: str) -> str:
        return self.idx(f"dedup:{key}")

    def client(self, client_id: str, what: str) -> str:
        return self.idx(f"client:{client_id}:{what}")


@dataclass
class _Tx:
    """One optimistic transaction: what it read (to index the difference) and its event counters."""

    pipe: Any
    keys: _Keys
    before: dict[str, JobRecord | None] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    event_seq: dict[str, int] = field(default_factory=dict)
    started: bool = False

    def read_job(self, job_id: str) -> JobRecord | None:
        """WATCH the job's hash, then read it (immediate mode, before MULTI)."""
        key = self.keys.job(job_id)
        self.pipe.watch(key)
        h = self.pipe.hgetall(key)
        if not h:
            self.before[job_id] = None
            return None
        job = _decode(h)
        self.before[job_id] = copy.deepcopy(job)
        self.seq[job_id] = int(h.get("seq", 0))
        self.event_seq[job_id] = job.last_event_seq
        return job

    def begin(self) -> None:
        """From here on commands are queued, and run together at EXEC."""
        self.pipe.multi()
        self.started = True


class RedisJobStore(LedgerPolicy):
    """:class:`~rescored_ray.service.ledger.JobStore` on Redis (see the module docstring).

    Safe to share between threads (redis-py's connection pool), and between processes
    and nodes: every instance on the same server and ``prefix`` is one ledger.
    """

    def __init__(
        self,
        url: str | redis.Redis,
        *,
        prefix: str = "",
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
        self.url = url if isinstance(url, str) else None
        # Any: redis-py cannot type a client that answers str (decode_responses=True)
        self._redis: Any = redis_from_url(url) if isinstance(url, str) else url
        self.prefix = prefix
        self.keys = _Keys(prefix)
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    @property
    def redis(self) -> Any:
        """The client (any: redis-py cannot type one that answers str); an error once closed."""
        if self._closed:
            raise RuntimeError("RedisJobStore is closed")
        return self._redis

    def _run(self, body: Callable[[_Tx], Any]) -> Any:
        """Run ``body`` as one optimistic transaction, again from the start whenever a watched
        key changed before EXEC; announce its transitions once it committed."""
        client = self.redis
        while True:
            self._pending.clear()
            with client.pipeline(transaction=True) as pipe:
                tx = _Tx(pipe, self.keys)
                try:
                    result = body(tx)
                    if tx.started:
                        pipe.execute()
                    else:
                        pipe.reset()
                except redis.WatchError:
                    continue
                except BaseException:
                    self._pending.clear()
                    raise
            self._announce()
            return result

    def _save(self, tx: _Tx, job: JobRecord) -> None:
        """Queue the job's hash and every index that follows from how it changed."""
        pipe, k, jid = tx.pipe, self.keys, job.job_id
        old = tx.before.get(jid)
        seq = tx.seq[jid]
        mapping, absent = _encode(job)
        mapping["seq"] = str(seq)
        if absent and old is not None:
            pipe.hdel(k.job(jid), *absent)
        pipe.hset(k.job(jid), mapping=mapping)
        client = job.client_id
        if old is None:
            pipe.zadd(k.idx("jobs"), {jid: seq})
            pipe.zadd(k.dedup(job.dedup_key), {jid: seq})
            if client is not None:
                pipe.zadd(k.client(client, "jobs"), {jid: seq})
                pipe.zadd(k.client(client, "created"), {jid: job.created_at})
        old_status = old.status if old is not None else None
        if old_status is not job.status:
            if old_status is not None:
                pipe.zrem(k.status(old_status), jid)
            pipe.zadd(k.status(job.status), {jid: seq})
        if job.status is JobStatus.QUEUED:
            pipe.zadd(k.queued(job.priority), {jid: seq})
            pipe.zadd(k.idx("ready_at"), {jid: job.not_before})
        elif old is not None and old_status is JobStatus.QUEUED:
            pipe.zrem(k.queued(old.priority), jid)
            pipe.zrem(k.idx("ready_at"), jid)
        if job.status is JobStatus.RUNNING and job.lease_expires_at is not None:
            pipe.zadd(k.idx("running"), {jid: job.lease_expires_at})
        elif old_status is JobStatus.RUNNING:
            pipe.zrem(k.idx("running"), jid)
        if job.expires_at is not None:
            pipe.zadd(k.idx("expiring"), {jid: job.expires_at})
        elif old is not None and old.expires_at is not None:
            pipe.zrem(k.idx("expiring"), jid)
        if client is not None:
            if job.status in _ACTIVE:
                pipe.sadd(k.client(client, "active"), jid)
            elif old_status in _ACTIVE:
                pipe.srem(k.client(client, "active"), jid)

    def _emit(self, tx: _Tx, job_id: str, type_: str, data: dict, now: float) -> int:
        """Append to ``job:{id}:events`` and publish the WebSocket's message on ``job:{id}:updates``,
        inside the transaction: a subscriber never hears of a change that did not commit."""
        seq = tx.event_seq.get(job_id, 0) + 1
        tx.event_seq[job_id] = seq
        event = JobEvent(job_id=job_id, seq=seq, type=type_, data=data, at=now)  # type: ignore[arg-type]
        pipe = tx.pipe
        pipe.rpush(self.keys.events(job_id), _dumps(event.to_dict()))
        pipe.hset(self.keys.job(job_id), "event_seq", str(seq))
        pipe.publish(self.keys.updates(job_id), _dumps({"seq": seq, **event_message(job_id, event)}))
        if type_ in ("queued", "retrying"):
            pipe.publish(self.keys.idx("queue"), job_id)  # wakes idle workers
        return seq

    def _change(self, job_id: str, worker_id: str | None, apply: Callable[[_Tx, JobRecord, float], Any], refused: Any):
        """Read ``job_id`` (watched); if ``worker_id`` holds its lease (or none is needed and it
        exists), run ``apply`` on it in a transaction, else return ``refused``."""

        def body(tx: _Tx) -> Any:
            job = tx.read_job(job_id)
            if job is None or (worker_id is not None and not self._held(job, worker_id)):
                return refused(job) if callable(refused) else refused
            now = float(self.clock())
            tx.begin()
            return apply(tx, job, now)

        return self._run(body)

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
        """As :meth:`SQLiteJobStore.submit <rescored_ray.service.ledger.SQLiteJobStore.submit>`:
        the dedup lookup, the client's limits and the new job are one transaction."""
        validate_priority(priority)
        if not isinstance(source, str) or not source:
            raise ValueError("source must be a non-empty string")
        if not isinstance(dedup_key, str) or not dedup_key:
            raise ValueError("dedup_key must be a non-empty string")
        options = dict(options or {})
        _dumps(options)  # must be JSON: fail before the transaction
        k = self.keys
        # The submission order; taken once, outside the transaction, so a retried transaction
        # keeps its place. Gaps (a refused submission) are harmless: only the order matters.
        seq = int(self.redis.incr(k.idx("seq")))

        def body(tx: _Tx) -> tuple[JobRecord, bool]:
            pipe = tx.pipe
            limited = limits is not None and client_id is not None
            watched = [k.dedup(dedup_key)]
            if limited:
                watched += [k.client(str(client_id), "active"), k.client(str(client_id), "created")]
            pipe.watch(*watched)
            now = float(self.clock())
            for jid in pipe.zrevrange(k.dedup(dedup_key), 0, -1):
                job = tx.read_job(jid)
                if job is None:
                    continue
                live = job.status in _ACTIVE and not job.cancel_requested
                fresh = job.status is JobStatus.COMPLETED and (job.expires_at is None or job.expires_at >= now)
                if live or fresh:
                    self._notify("submitted", job, deduplicated=True)
                    return job, True
            if limited:
                assert limits is not None and client_id is not None
                self._check_limits(pipe, client_id, limits, now)
            job_id = secrets.token_hex(16)  # as SQLite: 128 bits, safe in URLs, file names, CLI arguments
            job = JobRecord(
                job_id=job_id,
                source=source,
                dedup_key=dedup_key,
                options=options,
                priority=priority,
                status=JobStatus.QUEUED,
                created_at=now,
                updated_at=now,
                max_attempts=1 + self.max_retries,
                not_before=now,
                status_message="queued",
                client_id=client_id,
            )
            tx.before[job_id] = None
            tx.seq[job_id] = seq
            tx.event_seq[job_id] = 0
            tx.begin()
            self._save(tx, job)
            job.last_event_seq = self._emit(tx, job_id, "queued", {"priority": priority, "source": source}, now)
            self._notify("submitted", job, deduplicated=False)
            return job, False

        result: tuple[JobRecord, bool] = self._run(body)
        return result

    def _check_limits(self, pipe: Any, client_id: str, limits: ClientLimits, now: float) -> None:
        k = self.keys
        if limits.max_active is not None:
            active = int(pipe.scard(k.client(client_id, "active")))
            if active >= limits.max_active:
                raise RateLimited(
                    f"{active} jobs of this client are queued or running (limit "
                    f"{limits.max_active}); wait for one to finish",
                    retry_after_s=30.0,
                )
        if limits.jobs_per_window is not None:
            since = now - limits.window_s
            rows = pipe.zrangebyscore(
                k.client(client_id, "created"),
                f"({since!r}",
                "+inf",
                start=0,
                num=limits.jobs_per_window,
                withscores=True,
            )
            if len(rows) >= limits.jobs_per_window:
                retry_after = float(rows[0][1]) + limits.window_s - now
                raise RateLimited(
                    f"rate limit: {limits.jobs_per_window} new jobs per {limits.window_s:g} s",
                    retry_after_s=max(1.0, retry_after),
                )

    def get(self, job_id: str) -> JobRecord | None:
        h = self.redis.hgetall(self.keys.job(job_id))
        return _decode(h) if h else None

    def _get_many(self, ids: list[str]) -> list[JobRecord]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for jid in ids:
            pipe.hgetall(self.keys.job(jid))
        return [_decode(h) for h in pipe.execute() if h]

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 100, client_id: str | None = None
    ) -> list[JobRecord]:
        """Newest first; of one status and/or one client when given."""
        limit = max(0, int(limit))
        wanted = JobStatus(status) if status is not None else None
        if limit == 0:
            return []
        k = self.keys
        if client_id is None:
            index = k.status(wanted) if wanted is not None else k.idx("jobs")
            jobs = self._get_many(self.redis.zrevrange(index, 0, limit - 1))
            return [j for j in jobs if wanted is None or j.status is wanted]
        out: list[JobRecord] = []
        start = 0
        while len(out) < limit:  # a client's jobs of one status: page through the client's index
            ids = self.redis.zrevrange(k.client(client_id, "jobs"), start, start + max(limit, _PAGE) - 1)
            if not ids:
                break
            out += [j for j in self._get_many(ids) if wanted is None or j.status is wanted]
            start += len(ids)
        return out[:limit]

    def lease(self, worker_id: str, lease_s: float) -> JobRecord | None:
        """Take back expired leases, then atomically take the next ready job: high before
        default, FIFO by submission sequence (a job backing off is skipped, not reordered)."""
        if not worker_id:
            raise ValueError("worker_id must be non-empty")
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")
        self.requeue_expired()
        k = self.keys

        def body(tx: _Tx) -> JobRecord | None:
            pipe = tx.pipe
            pipe.watch(*(k.queued(p) for p in PRIORITIES), k.idx("ready_at"))
            now = float(self.clock())
            for priority in PRIORITIES:
                start = 0
                while ids := pipe.zrange(k.queued(priority), start, start + _PAGE - 1):
                    for jid, ready_at in zip(ids, pipe.zmscore(k.idx("ready_at"), ids), strict=True):
                        if ready_at is not None and ready_at > now:
                            continue
                        job = tx.read_job(jid)
                        if job is None or job.status is not JobStatus.QUEUED:
                            continue
                        tx.begin()
                        return self._apply_lease(tx, job, worker_id, lease_s, now)
                    start += len(ids)
            return None

        leased: JobRecord | None = self._run(body)
        return leased

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> HeartbeatReply:
        if lease_s <= 0:
            raise ValueError("lease_s must be > 0")

        def extend(tx: _Tx, job: JobRecord, now: float) -> HeartbeatReply:
            job.lease_expires_at = now + lease_s
            job.updated_at = now
            self._save(tx, job)
            return HeartbeatReply(ok=True, cancel_requested=job.cancel_requested)

        reply: HeartbeatReply = self._change(
            job_id,
            worker_id,
            extend,
            lambda job: HeartbeatReply(ok=False, cancel_requested=bool(job and job.cancel_requested)),
        )
        return reply

    def update_progress(
        self, job_id: str, worker_id: str, percent: int, stage: str | None, message: str | None
    ) -> bool:
        return bool(
            self._change(
                job_id,
                worker_id,
                lambda tx, job, now: self._apply_progress(tx, job, percent, stage, message, now),
                False,
            )
        )

    def complete(self, job_id: str, worker_id: str, result: dict, timeline: list[dict] | None = None) -> bool:
        result = dict(result or {})
        _dumps(result)  # must be JSON: fail before the transaction
        return bool(
            self._change(
                job_id, worker_id, lambda tx, job, now: self._apply_complete(tx, job, result, timeline, now), False
            )
        )

    def fail(
        self,
        job_id: str,
        worker_id: str,
        error: dict | BaseException,
        retryable: bool,
        timeline: list[dict] | None = None,
    ) -> JobRecord | None:
        """See :meth:`LedgerPolicy._apply_fail <rescored_ray.service.ledger.LedgerPolicy._apply_fail>`."""
        failed: JobRecord | None = self._change(
            job_id,
            worker_id,
            lambda tx, job, now: self._apply_fail(tx, job, error, retryable, timeline, now),
            None,
        )
        return failed

    def cancel(self, job_id: str) -> JobRecord | None:
        def body(tx: _Tx) -> JobRecord | None:
            job = tx.read_job(job_id)
            if job is None:
                return None
            if job.status is JobStatus.QUEUED or (job.status is JobStatus.RUNNING and not job.cancel_requested):
                now = float(self.clock())
                tx.begin()
                return self._apply_cancel(tx, job, now)
            return job  # finished, or already asked: nothing to change

        cancelled: JobRecord | None = self._run(body)
        return cancelled

    def mark_cancelled(self, job_id: str, worker_id: str, timeline: list[dict] | None = None) -> bool:
        return bool(
            self._change(
                job_id, worker_id, lambda tx, job, now: self._apply_mark_cancelled(tx, job, timeline, now), False
            )
        )

    def requeue_expired(self) -> list[str]:
        """Take back every running job whose ``lease_expires_at < now``, each in its own
        transaction (see :meth:`LedgerPolicy._apply_take_back
        <rescored_ray.service.ledger.LedgerPolicy._apply_take_back>`)."""
        now = float(self.clock())
        taken = []
        for jid in self.redis.zrangebyscore(self.keys.idx("running"), "-inf", f"({now!r}"):

            def body(tx: _Tx, jid: str = jid) -> bool:
                job = tx.read_job(jid)
                now = float(self.clock())
                if job is None or job.status is not JobStatus.RUNNING:
                    return False
                if job.lease_expires_at is None or not job.lease_expires_at < now:
                    return False  # heartbeated since
                tx.begin()
                self._apply_take_back(tx, job, now)
                return True

            if self._run(body):
                taken.append(jid)
        return taken

    def expire(self) -> list[JobRecord]:
        """Delete jobs past their ``expires_at``, their events and every index entry; returns them."""
        k = self.keys
        now = float(self.clock())
        gone = []
        for jid in self.redis.zrangebyscore(k.idx("expiring"), "-inf", f"({now!r}"):

            def body(tx: _Tx, jid: str = jid) -> JobRecord | None:
                job = tx.read_job(jid)
                pipe = tx.pipe
                if job is not None and (job.expires_at is None or not job.expires_at < now):
                    return None
                tx.begin()
                pipe.zrem(k.idx("expiring"), jid)
                if job is None:
                    return None
                pipe.delete(k.job(jid), k.events(jid))
                for index in (k.idx("jobs"), k.status(job.status), k.dedup(job.dedup_key), k.idx("running")):
                    pipe.zrem(index, jid)
                pipe.zrem(k.queued(job.priority), jid)
                pipe.zrem(k.idx("ready_at"), jid)
                if job.client_id is not None:
                    pipe.zrem(k.client(job.client_id, "jobs"), jid)
                    pipe.zrem(k.client(job.client_id, "created"), jid)
                    pipe.srem(k.client(job.client_id, "active"), jid)
                return job

            job = self._run(body)
            if job is not None:
                gone.append(job)
        return gone

    def events(self, job_id: str, after_seq: int = 0, limit: int = 1000) -> list[JobEvent]:
        after_seq, limit = max(0, int(after_seq)), max(0, int(limit))
        if limit == 0:
            return []
        raw = self.redis.lrange(self.keys.events(job_id), after_seq, after_seq + limit - 1)
        return [_event(json.loads(item)) for item in raw]

    def next_ready_at(self) -> float | None:
        """The earliest ``not_before`` of a queued job or lease expiry of a running one; None if neither."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrange(self.keys.idx("ready_at"), 0, 0, withscores=True)
        pipe.zrange(self.keys.idx("running"), 0, 0, withscores=True)
        times = [float(rows[0][1]) for rows in pipe.execute() if rows]
        return min(times) if times else None

    def queue_stats(self) -> dict:
        pipe = self.redis.pipeline(transaction=True)  # one consistent snapshot
        for priority in PRIORITIES:
            pipe.zcard(self.keys.queued(priority))
        others = [s for s in JobStatus if s is not JobStatus.QUEUED]
        for st in others:
            pipe.zcard(self.keys.status(st))
        counts = pipe.execute()
        stats: dict[str, Any] = {"queued": dict(zip(PRIORITIES, counts[: len(PRIORITIES)], strict=True))}
        for st, n in zip(others, counts[len(PRIORITIES) :], strict=True):
            stats[st.value] = n
        return stats

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._redis.close()

    def __enter__(self) -> RedisJobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ beyond the protocol

    def mark_worker_seen(self, worker_id: str) -> None:
        """Remember that this worker slot asked for work now (the status page's busy/idle slots)."""
        self.redis.zadd(self.keys.idx("workers"), {worker_id: float(self.clock())})

    def workers_seen(self, forget_after_s: float) -> dict[str, float]:
        """Worker slot -> when it last asked for work; slots silent longer than ``forget_after_s`` are dropped."""
        now = float(self.clock())
        self.redis.zremrangebyscore(self.keys.idx("workers"), "-inf", f"({now - forget_after_s!r}")
        return {w: float(t) for w, t in self.redis.zrange(self.keys.idx("workers"), 0, -1, withscores=True)}

    @contextmanager
    def queue_wakeups(self) -> Iterator[Callable[[float], bool]]:
        """Subscribe to the queue channel; yields ``wait(timeout) -> bool`` (True: something was
        queued or re-queued since). Subscribe *before* looking at the queue, so nothing queued
        in between is missed."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.keys.idx("queue"))
        try:

            def wait(timeout: float) -> bool:
                deadline = time.monotonic() + max(0.0, timeout)
                while True:
                    remaining = deadline - time.monotonic()
                    message = pubsub.get_message(timeout=max(0.0, remaining))
                    if message is not None and message.get("type") == "message":
                        return True
                    if remaining <= 0:
                        return False

            yield wait
        finally:
            pubsub.close()

    async def follow(self, job_id: str, after_seq: int, heartbeat_s: float) -> AsyncIterator[dict[str, Any] | None]:
        """The job's WebSocket messages after ``after_seq``, live from ``job:{id}:updates``; None
        after ``heartbeat_s`` of silence (the caller sends a heartbeat). Subscribes first, then
        catches up from ``job:{id}:events``; a message whose seq is not the next one (a gap: the
        subscription dropped, Redis restarted) is filled from the log too, so the stream is
        whole and in order. Each message carries its ``seq``."""
        if self.url is None:
            raise RuntimeError("follow() needs a store made from a URL")
        client = aioredis.Redis.from_url(self.url, decode_responses=True, socket_connect_timeout=5)
        seq = after_seq
        try:
            while True:
                try:
                    async for message in self._follow_once(client, job_id, seq, heartbeat_s):
                        if message is not None:
                            seq = int(message["seq"])
                        yield message
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    # Redis restarted or the connection dropped: subscribe again and catch up from the log
                    await asyncio.sleep(0.5)
                    yield None
        finally:
            await client.aclose()

    async def _follow_once(
        self, client: aioredis.Redis, job_id: str, seq: int, heartbeat_s: float
    ) -> AsyncIterator[dict[str, Any] | None]:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.updates(job_id))
        last = time.monotonic()  # when the caller last heard something
        try:
            while True:
                for event in await self._events_async(client, job_id, seq):
                    seq = event.seq
                    last = time.monotonic()
                    yield {"seq": event.seq, **event_message(job_id, event)}
                # None also comes at once for the subscription's own confirmation: only a
                # whole heartbeat_s of silence is reported
                message = await pubsub.get_message(timeout=max(0.0, last + heartbeat_s - time.monotonic()))
                if message is None:
                    if time.monotonic() - last >= heartbeat_s:
                        last = time.monotonic()
                        yield None
                    continue
                if message.get("type") != "message":
                    continue
                data = json.loads(message["data"])
                if data.get("seq") == seq + 1:
                    seq += 1
                    last = time.monotonic()
                    yield data
                # anything else (an old one, or a gap) is settled by the log at the loop's top
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _events_async(self, client: aioredis.Redis, job_id: str, after_seq: int) -> list[JobEvent]:
        raw = await client.lrange(self.keys.events(job_id), after_seq, after_seq + 999)
        return [_event(json.loads(item)) for item in raw]


def _event(d: dict[str, Any]) -> JobEvent:
    return JobEvent(job_id=d["job_id"], seq=int(d["seq"]), type=d["type"], data=d["data"], at=float(d["at"]))
