"""The job ledger's contract, run on both stores: SQLite (a real database file under
``tmp_path``) and Redis (a real ``redis-server``, tests/redis_server.py, each test under its
own key prefix).

Every test runs once per store (``[sqlite]``, ``[redis]``) with a fake clock; the
concurrency and crash tests use real threads and real processes (fork where available) on
the same store. A store is named by a string (``db``): a file path, or
``redis://host:port/db#prefix``, which :func:`open_store` opens in any process.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import re
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rescored_ray.errors import NonRetryableError, RetryableError
from rescored_ray.service.ledger import (
    Attempt,
    HeartbeatReply,
    JobEvent,
    JobRecord,
    JobStatus,
    JobStore,
    SQLiteJobStore,
    dedup_key,
)
from rescored_ray.service.redis_store import RedisJobStore

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> float:
        self.t += s
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def open_store(spec: str, **kwargs: Any) -> Any:
    """The store named by ``spec``: a SQLite file path, or ``redis://...#prefix``."""
    if spec.startswith("redis://"):
        from rescored_ray.service.redis_store import RedisJobStore

        url, _, prefix = spec.partition("#")
        return RedisJobStore(url, prefix=prefix, **kwargs)
    return SQLiteJobStore(spec, **kwargs)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request) -> str:
    return str(request.param)


@pytest.fixture
def db(backend: str, tmp_path: Path, request) -> str:
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        return f"{server.url(1)}#{tmp_path.name}:"  # a key prefix per test: stores never meet
    return str(tmp_path / "data" / "ledger.sqlite3")


@pytest.fixture
def store(db: str, clock: FakeClock):
    s = open_store(db, clock=clock)
    yield s
    s.close()


def _submit(store: Any, name: str, priority: str = "default", **options) -> JobRecord:
    job, deduped = store.submit(f"https://example.com/{name}", dedup_key(name, options), options, priority)
    assert not deduped
    return job


def _mp_context():
    # fork is fast; callers make sure no SQLite connection is open here when they fork.
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


# ----------------------------------------------------------------------------- basics


def test_store_is_wal_and_jobstore(store: Any, db: str, backend: str) -> None:
    assert isinstance(store, JobStore)
    if backend == "redis":
        return  # its layout: test_redis_data_model_follows_the_design
    assert Path(db).exists()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        raw.close()
    # Per-connection settings, so read them on the store's own connection.
    sqlite_store: Any = store
    assert sqlite_store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert sqlite_store._conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_submit_creates_queued_job_with_event(store: Any, clock: FakeClock) -> None:
    job, deduped = store.submit("https://example.com/a", "k1", {"stems": ["other"]}, "high")
    assert deduped is False
    assert job.status is JobStatus.QUEUED and job.priority == "high"
    assert job.max_attempts == 4 and job.attempts == [] and job.progress == 0
    assert job.created_at == job.updated_at == job.not_before == T0
    assert re.fullmatch(r"[0-9a-f]{32}", job.job_id)  # 128 random bits; never starts with "-" (CLI-safe)
    got = store.get(job.job_id)
    assert got == job
    d = got.to_dict()
    assert json.loads(json.dumps(d)) == d and d["status"] == "queued"
    evs = store.events(job.job_id)
    assert [(e.seq, e.type) for e in evs] == [(1, "queued")]
    assert store.get("nope") is None


def test_invalid_priority_and_arguments(store: Any) -> None:
    with pytest.raises(ValueError):
        store.submit("s", "k", {}, "urgent")
    with pytest.raises(ValueError):
        store.submit("s", "k", {}, "HIGH")
    with pytest.raises(TypeError):
        store.submit("s", "k", {"x": object()})  # options must be JSON
    assert store.list_jobs() == []


def test_dedup_key_helper() -> None:
    a = dedup_key("yt:abc", {"stems": ["other"], "tempo": 90})
    b = dedup_key("yt:abc", {"tempo": 90, "stems": ["other"]})
    assert a == b and len(a) == 64
    assert dedup_key("yt:abc", {"tempo": 91, "stems": ["other"]}) != a
    assert dedup_key("yt:abd", {"stems": ["other"], "tempo": 90}) != a


# ----------------------------------------------------------------------------- ordering


def test_priority_then_fifo(store: Any, clock: FakeClock) -> None:
    # The clock never moves, so created_at ties everywhere: order must come from the sequence.
    d1 = _submit(store, "d1")
    d2 = _submit(store, "d2")
    h1 = _submit(store, "h1", "high")
    d3 = _submit(store, "d3")
    h2 = _submit(store, "h2", "high")
    order = []
    while (j := store.lease("w", 60)) is not None:
        order.append(j.job_id)
    assert order == [h1.job_id, h2.job_id, d1.job_id, d2.job_id, d3.job_id]


def test_fifo_uses_sequence_not_clock(store: Any, clock: FakeClock) -> None:
    a = _submit(store, "a")
    clock.advance(-100)  # the wall clock steps backwards (NTP)
    b = _submit(store, "b")
    assert b.created_at < a.created_at
    clock.advance(200)
    assert store.lease("w", 60).job_id == a.job_id
    assert store.lease("w", 60).job_id == b.job_id
    assert [j.job_id for j in store.list_jobs()] == [b.job_id, a.job_id]  # newest first


# ----------------------------------------------------------------------------- dedup


def test_dedup_queued_running_completed(store: Any, clock: FakeClock) -> None:
    job = _submit(store, "song", tempo=90)
    key = job.dedup_key
    again, deduped = store.submit(job.source, key, {"tempo": 90})
    assert deduped and again.job_id == job.job_id

    leased = store.lease("w1", 60)
    assert leased.job_id == job.job_id
    again, deduped = store.submit(job.source, key, {"tempo": 90})
    assert deduped and again.job_id == job.job_id and again.status is JobStatus.RUNNING

    assert store.complete(job.job_id, "w1", {"n_notes": 3})
    clock.advance(store.result_ttl_s - 1)
    again, deduped = store.submit(job.source, key, {"tempo": 90})
    assert deduped and again.job_id == job.job_id and again.status is JobStatus.COMPLETED

    # Past the result TTL (even before expire() ran) the completed job no longer dedups.
    clock.advance(2)
    fresh, deduped = store.submit(job.source, key, {"tempo": 90})
    assert not deduped and fresh.job_id != job.job_id and fresh.status is JobStatus.QUEUED
    assert len(store.list_jobs()) == 2


def test_failed_and_cancelled_do_not_dedup(store: Any) -> None:
    job = _submit(store, "bad")
    store.lease("w", 60)
    failed = store.fail(job.job_id, "w", NonRetryableError("private video", stage="source").to_dict(), False)
    assert failed.status is JobStatus.FAILED
    again, deduped = store.submit(job.source, job.dedup_key, {})
    assert not deduped and again.job_id != job.job_id

    cancelled = store.cancel(again.job_id)
    assert cancelled.status is JobStatus.CANCELLED
    third, deduped = store.submit(job.source, job.dedup_key, {})
    assert not deduped and third.job_id not in (job.job_id, again.job_id)


def test_running_job_with_cancel_requested_does_not_dedup(store: Any) -> None:
    job = _submit(store, "x")
    store.lease("w", 60)
    store.cancel(job.job_id)
    other, deduped = store.submit(job.source, job.dedup_key, {})
    assert not deduped and other.job_id != job.job_id


# ----------------------------------------------------------------------------- leasing


def test_lease_marks_running_with_attempt(store: Any, clock: FakeClock) -> None:
    job = _submit(store, "a")
    clock.advance(5)
    leased = store.lease("worker-1", 30)
    assert leased.job_id == job.job_id and leased.status is JobStatus.RUNNING
    assert leased.lease_owner == "worker-1" and leased.lease_expires_at == T0 + 35
    assert leased.started_at == T0 + 5
    assert leased.attempts == [Attempt(number=1, worker="worker-1", started_at=T0 + 5)]
    assert store.get(job.job_id) == leased
    assert store.lease("worker-2", 30) is None  # nothing else queued
    with pytest.raises(ValueError):
        store.lease("worker-2", 0)


def test_lease_expiry_requeues_and_next_attempt(store: Any, clock: FakeClock) -> None:
    job = _submit(store, "a")
    store.lease("dead-worker", 30)
    store.update_progress(job.job_id, "dead-worker", 40, "separation", "separating")
    clock.advance(30)
    assert store.requeue_expired() == []  # expires_at == now is not yet expired
    clock.advance(1)
    second = store.lease("w2", 30)  # lease re-queues the expired one first, then takes it
    assert second is not None and second.job_id == job.job_id
    assert len(second.attempts) == 2
    a1, a2 = second.attempts
    assert a1.outcome == "lease_expired" and a1.worker == "dead-worker" and a1.ended_at == T0 + 31
    assert a1.stage == "separation" and a1.error["type"] == "LeaseExpired"
    assert a2.number == 2 and a2.worker == "w2" and a2.outcome is None
    assert second.started_at == T0  # first start is kept
    assert second.progress == 0  # the new attempt starts over
    # The dead worker has lost the job for good.
    assert store.heartbeat(job.job_id, "dead-worker", 30) == HeartbeatReply(ok=False, cancel_requested=False)
    assert store.complete(job.job_id, "dead-worker", {}) is False
    types = [e.type for e in store.events(job.job_id)]
    assert types == ["queued", "progress", "retrying"]


def test_heartbeat_extends_lease(store: Any, clock: FakeClock) -> None:
    job = _submit(store, "a")
    store.lease("w", 30)
    clock.advance(20)
    assert store.heartbeat(job.job_id, "w", 30) == HeartbeatReply(ok=True, cancel_requested=False)
    assert store.get(job.job_id).lease_expires_at == T0 + 50
    clock.advance(25)  # T0+45: past the original lease, within the extended one
    assert store.requeue_expired() == []
    assert store.lease("other", 30) is None
    clock.advance(10)  # T0+55
    assert store.requeue_expired() == [job.job_id]
    got = store.get(job.job_id)
    assert got.status is JobStatus.QUEUED and got.lease_owner is None
    assert store.heartbeat(job.job_id, "w", 30).ok is False


def test_worker_lost_repeatedly_fails_after_max_attempts_plus_one(db: str, clock: FakeClock) -> None:
    store = open_store(db, max_retries=1, clock=clock)  # max_attempts = 2
    try:
        job = _submit(store, "poison")
        for i in range(3):
            leased = store.lease(f"w{i}", 10)
            assert leased is not None and leased.job_id == job.job_id, i
            clock.advance(11)
            assert store.requeue_expired() == [job.job_id]
        final = store.get(job.job_id)
        assert final.status is JobStatus.FAILED
        assert final.error["message"] == "worker lost repeatedly" and final.error["retryable"] is False
        assert [a.outcome for a in final.attempts] == ["lease_expired"] * 3
        assert len(final.attempts) == final.max_attempts + 1
        assert store.lease("w9", 10) is None
        assert store.events(job.job_id)[-1].type == "error"
    finally:
        store.close()


def test_lost_leases_count_against_retries(store: Any, clock: FakeClock) -> None:
    # max_attempts = 4: three lost leases then a retryable failure on attempt 4 -> failed.
    job = _submit(store, "a")
    for _ in range(3):
        store.lease("w", 10)
        clock.advance(11)
    leased = store.lease("w", 10)
    assert len(leased.attempts) == 4
    out = store.fail(job.job_id, "w", RetryableError("gpu oom").to_dict(), True)
    assert out.status is JobStatus.FAILED
    assert [a.outcome for a in out.attempts] == ["lease_expired"] * 3 + ["failed"]


def test_only_lease_holder_may_report(store: Any) -> None:
    job = _submit(store, "a")
    store.lease("owner", 60)
    assert store.update_progress(job.job_id, "intruder", 50, "transcription", "x") is False
    assert store.complete(job.job_id, "intruder", {"x": 1}) is False
    assert store.fail(job.job_id, "intruder", {"message": "boom"}, False) is None
    assert store.mark_cancelled(job.job_id, "intruder") is False
    assert store.heartbeat(job.job_id, "intruder", 60).ok is False
    got = store.get(job.job_id)
    assert got.status is JobStatus.RUNNING and got.progress == 0 and got.result is None
    assert [e.type for e in store.events(job.job_id)] == ["queued"]
    # Unknown jobs behave the same.
    assert store.update_progress("nope", "owner", 1, None, None) is False
    assert store.complete("nope", "owner", {}) is False
    assert store.heartbeat("nope", "owner", 1).ok is False
    # The real owner can.
    assert store.complete(job.job_id, "owner", {"n_notes": 1}) is True
    # ...but not twice, and not after the job ended.
    assert store.complete(job.job_id, "owner", {"n_notes": 2}) is False
    assert store.update_progress(job.job_id, "owner", 10, None, None) is False
    assert store.get(job.job_id).result == {"n_notes": 1}


# ----------------------------------------------------------------------------- progress / events


def test_progress_monotonic_and_events_ordered(store: Any, clock: FakeClock) -> None:
    job = _submit(store, "a")
    store.lease("w", 60)
    steps = [(5, "download"), (20, "separation"), (15, "separation"), (50, "transcription"), (250, "musicxml")]
    for pct, stage in steps:
        clock.advance(1)
        assert store.update_progress(job.job_id, "w", pct, stage, f"{stage} {pct}")
    got = store.get(job.job_id)
    assert got.progress == 100 and got.current_stage == "musicxml" and got.status_message == "musicxml 250"
    assert got.attempts[-1].stage == "musicxml"
    evs = store.events(job.job_id)
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    assert all(b.at >= a.at for a, b in itertools.pairwise(evs))
    progress = [e.data["progress"] for e in evs if e.type == "progress"]
    assert progress == [5, 20, 50, 100]  # the late 15 is dropped (not re-emitted as 20); capped at 100
    assert store.update_progress(job.job_id, "w", -5, None, None)
    assert store.get(job.job_id).progress == 100

    assert store.complete(job.job_id, "w", {"musicxml": "/out/a.musicxml", "n_notes": 42, "tempo": 90})
    done = store.get(job.job_id)
    assert done.status is JobStatus.COMPLETED and done.progress == 100 and done.completed_at == clock()
    assert done.expires_at == clock() + store.result_ttl_s
    assert done.attempts[-1].outcome == "completed" and done.lease_owner is None
    evs = store.events(job.job_id)
    assert evs[-1].type == "completed" and evs[-1].data == {"result": done.result}
    # Streaming: after_seq returns only what is newer, in order.
    tail = store.events(job.job_id, after_seq=evs[2].seq)
    assert [e.seq for e in tail] == [e.seq for e in evs[3:]]
    assert store.events(job.job_id, after_seq=evs[-1].seq) == []
    assert [e.seq for e in store.events(job.job_id, limit=2)] == [1, 2]
    assert isinstance(evs[0], JobEvent)


def test_completion_closes_the_stream_at_100_when_the_last_report_comes_late(store: Any) -> None:
    """Progress is fire and forget: the worker's 100 % can reach the ledger after its
    acknowledgement (CI saw a stream end 96, completed). The stream still reads 100 first."""
    job = _submit(store, "a")
    store.lease("w", 60)
    store.update_progress(job.job_id, "w", 96, "musicxml", "Writing stems and pages")
    assert store.complete(job.job_id, "w", {"n_notes": 1})
    assert store.update_progress(job.job_id, "w", 100, "musicxml", "late") is False  # no longer the holder
    evs = store.events(job.job_id)
    assert [(e.type, e.data.get("progress")) for e in evs[-3:]] == [
        ("progress", 96),
        ("progress", 100),
        ("completed", None),
    ]
    # A report that did arrive in time is not doubled.
    other = _submit(store, "b")
    store.lease("w", 60)
    store.update_progress(other.job_id, "w", 100, "musicxml", "Transcription complete")
    assert store.complete(other.job_id, "w", {"n_notes": 1})
    assert [e.data["progress"] for e in store.events(other.job_id) if e.type == "progress"] == [100]


def test_event_seq_is_per_job(store: Any) -> None:
    a = _submit(store, "a")
    b = _submit(store, "b")
    store.lease("w", 60)
    store.update_progress(a.job_id, "w", 10, "download", None)
    assert [e.seq for e in store.events(a.job_id)] == [1, 2]
    assert [e.seq for e in store.events(b.job_id)] == [1]


# ----------------------------------------------------------------------------- retries


def test_retry_backoff_then_failed_with_history(store: Any, clock: FakeClock) -> None:
    job = _submit(store, "flaky")
    delays = []
    for attempt in range(1, 5):
        leased = store.lease("w", 60)
        assert leased is not None and len(leased.attempts) == attempt
        store.update_progress(job.job_id, "w", 10 * attempt, "separation", None)
        err = RetryableError(f"network blip {attempt}", stage="download").to_dict()
        out = store.fail(job.job_id, "w", err, True)
        if attempt < 4:
            assert out.status is JobStatus.QUEUED
            wait = out.not_before - clock()
            delays.append(wait)
            # Not leasable a moment before not_before...
            clock.advance(wait - 0.01)
            assert store.lease("w", 60) is None
            clock.advance(0.01)
        else:
            assert out.status is JobStatus.FAILED
    assert delays == [1.0, 2.0, 4.0]
    final = store.get(job.job_id)
    assert final.status is JobStatus.FAILED and final.failed_at == clock()
    assert final.error == {
        "type": "RetryableError",
        "code": "transient_error",
        "message": "network blip 4",
        "stage": "download",
        "retryable": True,
    }
    assert final.expires_at == clock() + store.failed_ttl_s
    assert [a.outcome for a in final.attempts] == ["retrying", "retrying", "retrying", "failed"]
    assert [a.error["message"] for a in final.attempts] == [f"network blip {i}" for i in range(1, 5)]
    assert [a.stage for a in final.attempts] == ["separation"] * 4
    evs = store.events(job.job_id)
    retrying = [e.data for e in evs if e.type == "retrying"]
    assert [(r["retry_in_s"], r["attempt"]) for r in retrying] == [(1.0, 1), (2.0, 2), (4.0, 3)]
    assert evs[-1].type == "error" and evs[-1].data["error"]["message"] == "network blip 4"
    assert store.lease("w", 60) is None


def test_backoff_is_capped(db: str, clock: FakeClock) -> None:
    store = open_store(db, max_retries=10, backoff_base_s=100, backoff_max_s=250, clock=clock)
    try:
        job = _submit(store, "a")
        waits = []
        for _ in range(4):
            store.lease("w", 60)
            out = store.fail(job.job_id, "w", {"message": "x"}, True)
            waits.append(out.not_before - clock())
            clock.advance(waits[-1])
        assert waits == [100, 200, 250, 250]
    finally:
        store.close()


def test_non_retryable_fails_at_once(store: Any, clock: FakeClock) -> None:
    job = _submit(store, "private")
    store.lease("w", 60)
    out = store.fail(job.job_id, "w", NonRetryableError("age-restricted", stage="source"), False)
    assert out.status is JobStatus.FAILED and len(out.attempts) == 1
    assert out.error == {
        "type": "NonRetryableError",
        "code": "permanent_error",
        "message": "age-restricted",
        "stage": "source",
        "retryable": False,
    }
    assert out.attempts[0].outcome == "failed"
    assert store.get(job.job_id).status is JobStatus.FAILED
    assert [e.type for e in store.events(job.job_id)] == ["queued", "error"]
    clock.advance(3600)
    assert store.lease("w", 60) is None


# ----------------------------------------------------------------------------- cancel


def test_cancel_queued(store: Any, clock: FakeClock) -> None:
    job = _submit(store, "a")
    out = store.cancel(job.job_id)
    assert out.status is JobStatus.CANCELLED and out.cancelled_at == clock()
    assert out.expires_at == clock() + store.failed_ttl_s
    assert store.lease("w", 60) is None
    assert [e.type for e in store.events(job.job_id)] == ["queued", "cancelled"]
    assert store.cancel("unknown") is None


def test_cancel_running_via_heartbeat(store: Any) -> None:
    job = _submit(store, "a")
    store.lease("w", 60)
    assert store.heartbeat(job.job_id, "w", 60).cancel_requested is False
    out = store.cancel(job.job_id)
    assert out.status is JobStatus.RUNNING and out.cancel_requested is True
    reply = store.heartbeat(job.job_id, "w", 60)
    assert reply == HeartbeatReply(ok=True, cancel_requested=True)
    assert store.mark_cancelled(job.job_id, "someone-else") is False
    assert store.get(job.job_id).status is JobStatus.RUNNING
    assert store.mark_cancelled(job.job_id, "w") is True
    got = store.get(job.job_id)
    assert got.status is JobStatus.CANCELLED and got.lease_owner is None
    assert got.attempts[-1].outcome == "cancelled"
    assert store.events(job.job_id)[-1].type == "cancelled"
    assert store.heartbeat(job.job_id, "w", 60).ok is False


def test_cancel_terminal_is_noop(store: Any) -> None:
    job = _submit(store, "a")
    store.lease("w", 60)
    store.complete(job.job_id, "w", {"ok": True})
    before = store.get(job.job_id)
    out = store.cancel(job.job_id)
    assert out.status is JobStatus.COMPLETED and out.cancel_requested is False
    assert store.get(job.job_id) == before


def test_cancel_requested_blocks_retry_and_dead_worker(store: Any, clock: FakeClock) -> None:
    a = _submit(store, "a")
    b = _submit(store, "b")
    store.lease("wa", 10)
    store.lease("wb", 10)
    store.cancel(a.job_id)
    store.cancel(b.job_id)
    # a: the worker fails retryably after cancel was asked -> cancelled, not re-queued.
    assert store.fail(a.job_id, "wa", {"message": "interrupted"}, True).status is JobStatus.CANCELLED
    # b: the worker dies -> cancelled when its lease is taken back.
    clock.advance(11)
    assert store.requeue_expired() == [b.job_id]
    assert store.get(b.job_id).status is JobStatus.CANCELLED
    assert store.lease("w", 10) is None


# ----------------------------------------------------------------------------- expiry / stats


def test_expire_deletes_and_returns(db: str, clock: FakeClock) -> None:
    store = open_store(db, failed_ttl_s=100, result_ttl_s=1000, clock=clock)
    try:
        done = _submit(store, "done")
        bad = _submit(store, "bad")
        gone = _submit(store, "gone")
        waiting = _submit(store, "waiting")
        store.lease("w", 60)
        store.complete(done.job_id, "w", {"musicxml": "/out/done.musicxml"})
        store.lease("w", 60)
        store.fail(bad.job_id, "w", {"message": "nope"}, False)
        store.cancel(gone.job_id)

        clock.advance(100)
        assert store.expire() == []  # expires_at == now: not yet
        clock.advance(1)
        expired = store.expire()
        assert sorted(j.job_id for j in expired) == sorted([bad.job_id, gone.job_id])
        assert {j.job_id: j.status for j in expired} == {bad.job_id: JobStatus.FAILED, gone.job_id: JobStatus.CANCELLED}
        for j in expired:
            assert store.get(j.job_id) is None and store.events(j.job_id) == []
        assert store.get(done.job_id).status is JobStatus.COMPLETED

        clock.advance(1000)
        expired = store.expire()
        assert [j.job_id for j in expired] == [done.job_id]
        assert expired[0].result == {"musicxml": "/out/done.musicxml"}  # so the caller can delete files
        assert store.get(done.job_id) is None
        assert [j.job_id for j in store.list_jobs()] == [waiting.job_id]  # queued jobs never expire
        assert store.expire() == []
        # The sequence is never reused after deleting rows: FIFO continues.
        late = _submit(store, "late")
        assert store.lease("w", 60).job_id == waiting.job_id
        assert store.lease("w", 60).job_id == late.job_id
    finally:
        store.close()


def test_queue_stats_and_list(store: Any) -> None:
    assert store.queue_stats() == {
        "queued": {"high": 0, "default": 0},
        "running": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    hs = [_submit(store, f"h{i}", "high") for i in range(2)]
    ds = [_submit(store, f"d{i}") for i in range(5)]
    store.lease("w", 60)  # h0 -> completed
    store.complete(hs[0].job_id, "w", {})
    store.lease("w", 60)  # h1 -> running
    store.lease("w", 60)  # d0 -> failed
    store.fail(ds[0].job_id, "w", {"message": "x"}, False)
    store.cancel(ds[1].job_id)
    assert store.queue_stats() == {
        "queued": {"high": 0, "default": 3},
        "running": 1,
        "completed": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert [j.job_id for j in store.list_jobs(JobStatus.QUEUED)] == [d.job_id for d in reversed(ds[2:])]
    assert [j.job_id for j in store.list_jobs("running")] == [hs[1].job_id]
    assert len(store.list_jobs(limit=3)) == 3
    with pytest.raises(ValueError):
        store.list_jobs("bogus")


# ----------------------------------------------------------------------------- durability


def test_close_and_reopen_keeps_everything(db: str, clock: FakeClock) -> None:
    store = open_store(db, clock=clock)
    a = _submit(store, "a")
    b = _submit(store, "b", "high")
    c = _submit(store, "c")
    store.lease("w", 60)  # b
    store.update_progress(b.job_id, "w", 30, "separation", "half")
    store.lease("w", 60)  # a
    store.complete(a.job_id, "w", {"n_notes": 7})
    snapshot = {j.job_id: j for j in store.list_jobs()}
    events = {jid: store.events(jid) for jid in snapshot}
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError):
        store.get(a.job_id)

    reopened = open_store(db, clock=clock)
    try:
        assert {j.job_id: j for j in reopened.list_jobs()} == snapshot
        assert {jid: reopened.events(jid) for jid in snapshot} == events
        assert reopened.get(b.job_id).progress == 30
        # The worker still holds its lease across the restart of the ledger.
        assert reopened.heartbeat(b.job_id, "w", 60).ok
        d = _submit(reopened, "d")
        assert reopened.lease("w2", 60).job_id == c.job_id
        assert reopened.lease("w2", 60).job_id == d.job_id
    finally:
        reopened.close()


def _child_submit_then_hang(path: str, n: int, conn_w) -> None:
    store = open_store(path)
    ids = [store.submit(f"src{i}", f"key{i}", {"i": i})[0].job_id for i in range(n)]
    # Now hold a transaction open with uncommitted changes, and wait to be killed.
    if path.startswith("redis://"):
        assert isinstance(store, RedisJobStore)
        pipe = store.redis.pipeline(transaction=True)
        pipe.watch(*(store.keys.job(i) for i in ids))
        pipe.multi()  # queued on the server side of this connection, never EXECuted
        for i in ids:
            pipe.hset(store.keys.job(i), "status", "failed")
        pipe.hset(store.keys.job("ghost"), mapping={"job_id": "ghost", "status": "queued"})
        pipe.zadd(store.keys.idx("jobs"), {"ghost": 0})
        # redis-py buffers MULTI until EXEC; send the commands so the server holds them
        conn = pipe.connection or store.redis.connection_pool.get_connection()
        conn.send_packed_command(conn.pack_commands([("MULTI",), ("HSET", store.keys.job(ids[0]), "status", "failed")]))
    else:
        raw = sqlite3.connect(path, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("UPDATE jobs SET status = 'failed'")
        raw.execute(
            "INSERT INTO jobs (job_id, source, dedup_key, options, priority, priority_rank, status,"
            " created_at, updated_at, max_attempts, not_before) VALUES"
            " ('ghost', 's', 'k', '{}', 'default', 1, 'queued', 0, 0, 1, 0)"
        )
    conn_w.send(ids)
    conn_w.close()
    time.sleep(60)


def test_kill9_mid_transaction_keeps_committed_jobs(db: str) -> None:
    ctx = _mp_context()
    open_store(db).close()
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child_submit_then_hang, args=(db, 30, w), daemon=True)
    p.start()
    w.close()
    assert r.poll(20), "child did not report"
    ids = r.recv()
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert p.exitcode == -signal.SIGKILL

    store = open_store(db, clock=FakeClock(time.time() + 1))
    try:
        if not db.startswith("redis://"):
            raw = sqlite3.connect(db)
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            raw.close()
        jobs = store.list_jobs(limit=1000)
        assert sorted(j.job_id for j in jobs) == sorted(ids)  # no ghost, nothing lost
        assert all(j.status is JobStatus.QUEUED for j in jobs)  # the uncommitted UPDATE rolled back
        # The dead process's lock (SQLite's file lock, Redis's watches) is gone: writes go through at once.
        t = time.monotonic()
        leased = store.lease("w", 60)
        assert leased is not None and leased.job_id == ids[0]
        assert time.monotonic() - t < 5
    finally:
        store.close()


def _child_submit_forever(path: str, conn_w) -> None:
    store = open_store(path)
    i = 0
    while True:
        job, _ = store.submit(f"src{i}", f"key{i}", {"i": i}, "high" if i % 3 == 0 else "default")
        conn_w.send(job.job_id)  # sent only after the commit returned
        i += 1


def test_kill9_during_write_loop_keeps_every_acknowledged_job(db: str) -> None:
    ctx = _mp_context()
    open_store(db).close()
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child_submit_forever, args=(db, w), daemon=True)
    p.start()
    w.close()
    acked: list[Any] = []
    deadline = time.monotonic() + 20
    while len(acked) < 40 and time.monotonic() < deadline:
        if r.poll(1):
            acked.append(r.recv())
    os.kill(p.pid, signal.SIGKILL)  # at whatever point of a transaction it happens to be
    p.join(10)
    while r.poll(0.2):
        try:
            acked.append(r.recv())
        except EOFError:
            break
    assert len(acked) >= 40
    store = open_store(db)
    try:
        present = {j.job_id: j for j in store.list_jobs(limit=100_000)}
        assert set(acked) <= set(present)
        for jid in acked:
            assert [e.type for e in store.events(jid)] == ["queued"]
        # Every row is whole: each job has its queued event (no half-written submit).
        assert all(store.events(jid)[0].type == "queued" for jid in present)
    finally:
        store.close()


# ----------------------------------------------------------------------------- contention


def _leaser_loop(store: Any, name: str, out: list) -> None:
    while True:
        job = store.lease(name, 60)
        if job is None:
            return
        out.append(job.job_id)
        time.sleep(0.002)  # "work" outside the lock, so every leaser gets to contend
        assert store.update_progress(job.job_id, name, 50, "transcription", None)
        assert store.complete(job.job_id, name, {"by": name})


def _child_leaser(path: str, name: str, ready, start, q) -> None:
    store = open_store(path)
    ready.put(name)  # the store is open: the parent starts everyone together
    got: list = []
    try:
        start.wait(20)
        _leaser_loop(store, name, got)
        q.put((name, got, None))
    except BaseException as e:  # report, don't hang the parent
        q.put((name, got, repr(e)))
    finally:
        store.close()


def test_lease_exclusive_across_threads_and_processes(db: str) -> None:
    n_jobs = 200
    setup = open_store(db)
    submitted = [
        setup.submit(f"src{i}", f"key{i}", {}, "high" if i % 4 == 0 else "default")[0].job_id for i in range(n_jobs)
    ]
    setup.close()  # no SQLite connection may be open in this process across fork()

    ctx = _mp_context()
    start, ready = ctx.Event(), ctx.Queue()
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_leaser, args=(db, f"proc{i}", ready, start, q), daemon=True) for i in range(2)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)

    setup = open_store(db)
    shared = open_store(db)  # two threads share one instance, two have their own
    stores = [shared, shared, open_store(db), open_store(db)]
    results: dict[str, list] = {f"thread{i}": [] for i in range(4)}
    errors: list = []

    def run(i: int) -> None:
        try:
            _leaser_loop(stores[i], f"thread{i}", results[f"thread{i}"])
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    start.set()
    for t in threads:
        t.start()
    for _ in procs:
        name, got, err = q.get(timeout=60)
        assert err is None, (name, err)
        results[name] = got
    for t in threads:
        t.join(60)
    for p in procs:
        p.join(10)
    assert errors == []

    all_leased = [jid for got in results.values() for jid in got]
    assert len(all_leased) == n_jobs, {k: len(v) for k, v in results.items()}
    assert sorted(all_leased) == sorted(submitted)  # every job exactly once
    # The contention was real: both threads and processes took jobs.
    assert sum(len(results[f"thread{i}"]) for i in range(4)) > 0, {k: len(v) for k, v in results.items()}
    assert sum(len(results[f"proc{i}"]) for i in range(2)) > 0, {k: len(v) for k, v in results.items()}
    stats = setup.queue_stats()
    assert stats["completed"] == n_jobs and stats["running"] == 0 and stats["queued"] == {"high": 0, "default": 0}
    for jid in submitted:
        job = setup.get(jid)
        assert len(job.attempts) == 1 and job.attempts[0].outcome == "completed"
        assert job.result == {"by": job.attempts[0].worker}
    for s in {id(s): s for s in [*stores, setup]}.values():
        s.close()


def test_record_carries_the_event_seq_it_was_read_at(store: Any) -> None:
    """A stream that starts from a record's state and reads events after its seq misses nothing."""
    job = _submit(store, "seq")
    assert job.last_event_seq == store.events(job.job_id)[-1].seq
    leased = store.lease("w1", 30)
    store.update_progress(job.job_id, "w1", 10, "download", "a")
    snapshot = store.get(job.job_id)
    store.update_progress(job.job_id, "w1", 20, "download", "b")
    store.complete(job.job_id, "w1", {"ok": True})
    after = store.events(job.job_id, snapshot.last_event_seq)
    assert leased is not None and snapshot.progress == 10
    assert [(e.type, e.data.get("progress")) for e in after] == [
        ("progress", 20),
        ("progress", 100),
        ("completed", None),
    ]


# ----------------------------------------------------------------------------- Redis only


def test_redis_data_model_follows_the_design(redis_server, tmp_path: Path, clock: FakeClock) -> None:
    """``job:{id}`` is a hash of the record; ``job:{id}:updates`` carries the WebSocket's own
    messages (with their seq), published in the same transaction as the change."""
    from rescored_ray.service.ledger import event_message

    store = RedisJobStore(redis_server.url(2), prefix=f"{tmp_path.name}:", clock=clock)
    try:
        job = _submit(store, "model", stems=["bass"])
        h = store.redis.hgetall(f"{tmp_path.name}:job:{job.job_id}")
        assert h["status"] == "queued" and h["priority"] == "default" and h["progress"] == "0"
        assert json.loads(h["options"]) == {"stems": ["bass"]} and h["event_seq"] == "1"
        pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(f"{tmp_path.name}:job:{job.job_id}:updates")
        store.lease("w", 60)
        store.update_progress(job.job_id, "w", 40, "separation", "separating")
        store.complete(job.job_id, "w", {"n_notes": 3})
        heard: list[dict] = []
        deadline = time.monotonic() + 5
        while len(heard) < 3 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message:
                heard.append(json.loads(message["data"]))
        pubsub.close()
        logged = store.events(job.job_id)
        assert heard == [{"seq": e.seq, **event_message(job.job_id, e)} for e in logged[1:]]
        assert heard[0]["type"] == "progress" and heard[0]["progress"] == 40
        assert heard[1]["type"] == "progress" and heard[1]["progress"] == 100  # a completion reads 100 %
        assert heard[2]["type"] == "completed" and heard[2]["result_url"] == f"/api/v1/scores/{job.job_id}"
        h = store.redis.hgetall(f"{tmp_path.name}:job:{job.job_id}")
        assert h["status"] == "completed" and "lease_owner" not in h and json.loads(h["result"]) == {"n_notes": 3}
    finally:
        store.close()


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
def test_redis_server_kill9_keeps_every_acknowledged_change(tmp_path: Path, appendfsync: str) -> None:
    """redis-server itself killed with -9 while a client submits, leases and completes, then
    restarted from its append-only file: every submission and completion that was
    acknowledged is there, whole (each job with its events and index entries)."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", appendfsync=appendfsync).start()
    acked: list[str] = []
    completed: list[str] = []
    try:
        store = RedisJobStore(server.url(0))
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                try:
                    job, _ = store.submit(f"src{i}", f"key{i}", {"i": i}, "high" if i % 3 == 0 else "default")
                    acked.append(job.job_id)
                    leased = store.lease("w", 60) if i % 2 == 0 else None
                    if leased is not None and store.complete(leased.job_id, "w", {"i": i}):
                        completed.append(leased.job_id)
                except Exception:
                    return  # the server is gone
                i += 1

        writer = threading.Thread(target=load)
        writer.start()
        deadline = time.monotonic() + 20
        while len(acked) < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill9()  # mid-write, at whatever point
        writer.join(10)
        stop.set()
        store.close()
        assert len(acked) >= 200
        server.start()  # replays the AOF
        reopened = RedisJobStore(server.url(0))
        try:
            present = {j.job_id: j for j in reopened.list_jobs(limit=100_000)}
            assert set(acked) <= set(present)
            assert all(present[jid].status is JobStatus.COMPLETED for jid in completed)
            stats = reopened.queue_stats()
            assert sum(stats["queued"].values()) + stats["running"] + stats["completed"] == len(present)
            for jid, job in present.items():  # whole: every job has its queued event first
                events = reopened.events(jid)
                assert events[0].type == "queued" and events[-1].seq == job.last_event_seq
        finally:
            reopened.close()
    finally:
        server.stop()
