"""The ledger as a Serve deployment: one replica owning the SQLite job store.

Serve restarts the replica if it dies; the new one reopens the same WAL database,
so queued, running and finished jobs survive (running ones are re-queued when their
lease expires). It also sweeps expired results: records and their files. A SQLite file
lives on one node's disk, so this replica is pinned to the head node (``app.build_app``).

With the Redis ledger (``service.ledger: redis://...``) the ingress and the workers talk to
Redis themselves (:mod:`rescored_ray.service.ledger_client`); this replica then only keeps
house: the expiry sweep, taking back expired leases, and the gauges.

Nobody polls it: an idle worker's ``lease_wait`` and a WebSocket's ``events_wait`` are
long-polls that return the moment the ledger commits something they care about (a job
queued, an event of their job), or when their wait runs out. Pokes come from whichever
thread committed; the waiters sleep on the replica's event loop (:class:`Wakeups`).

Being the one place every job passes through, it also keeps the service's books for
monitoring: each committed transition (submitted, leased, completed, retrying, failed,
cancelled) becomes a metric, a queue/worker gauge loop runs beside it, and it
remembers which worker slots asked for work recently, busy or idle (``workers()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from ray import serve

from rescored_ray import metrics
from rescored_ray.service.ledger import JobRecord, JobStatus, JobStore
from rescored_ray.service.ledger_client import ledger_kind, open_store, record_transition, worker_slots
from rescored_ray.service.serve_logs import route_to_replica_log
from rescored_ray.settings import Settings
from rescored_ray.storage import ResultStore

log = logging.getLogger(__name__)


QUEUE = "\0queue"  # the wake-up key of idle workers (job ids are the keys of event streams)


class Wakeups:
    """Async waiters keyed by what they wait for, woken from any thread.

    A waiter registers *before* it looks at the store and waits only after, so a change
    committed in between still wakes it (no lost wake-ups)."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiters: dict[str, set[asyncio.Future]] = {}

    def register(self, key: str) -> asyncio.Future:
        self.loop = asyncio.get_running_loop()
        future = self.loop.create_future()
        self.waiters.setdefault(key, set()).add(future)
        return future

    def unregister(self, key: str, future: asyncio.Future) -> None:
        waiting = self.waiters.get(key)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self.waiters[key]

    def poke(self, key: str) -> None:
        """Wake everyone waiting on ``key``; callable from any thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, key)

    def _wake(self, key: str) -> None:
        for future in self.waiters.get(key, ()):
            if not future.done():
                future.set_result(None)

    @staticmethod
    async def wait(future: asyncio.Future, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), max(0.0, timeout))


@serve.deployment(name="Ledger", num_replicas=1, max_ongoing_requests=1024, health_check_period_s=5)
class LedgerDeployment:
    def __init__(self, settings: dict[str, Any]):
        route_to_replica_log()
        self.config = Settings.model_validate(settings).service
        self.config.data_path.mkdir(parents=True, exist_ok=True)
        self.redis = ledger_kind(self.config.ledger_url) == "redis"
        if not self.redis:
            warn_if_not_on_head_node()
        self.store: JobStore = open_store(self.config, on_transition=self._on_transition)
        self.results = ResultStore(self.config.results_uri)
        self._seen: dict[str, float] = {}  # worker id -> last time it leased or heartbeated
        self.wakeups = Wakeups()
        self._stop = threading.Event()
        threading.Thread(target=self._sweep_loop, name="ledger-expiry", daemon=True).start()
        threading.Thread(target=self._gauge_loop, name="ledger-gauges", daemon=True).start()

    # Every JobStore method, served as-is (see rescored_ray.service.ledger).
    def submit(self, source, dedup_key, options, priority="default", client_id=None, limits=None):
        return self.store.submit(source, dedup_key, options, priority, client_id, limits)

    def get(self, job_id):
        return self.store.get(job_id)

    def list_jobs(self, status=None, limit=100, client_id=None):
        return self.store.list_jobs(status, limit, client_id)

    def lease(self, worker_id, lease_s):
        self._seen[worker_id] = time.time()
        return self.store.lease(worker_id, lease_s)

    def heartbeat(self, job_id, worker_id, lease_s):
        self._seen[worker_id] = time.time()
        return self.store.heartbeat(job_id, worker_id, lease_s)

    def update_progress(self, job_id, worker_id, percent, stage, message):
        updated = self.store.update_progress(job_id, worker_id, percent, stage, message)
        self.wakeups.poke(job_id)
        return updated

    async def lease_wait(self, worker_id: str, lease_s: float, wait_s: float):
        """Lease the next job, waiting up to ``wait_s`` for one to be queued (or for a retry's
        backoff to end); None if none came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            woken = self.wakeups.register(QUEUE)
            try:
                job = await asyncio.to_thread(self.lease, worker_id, lease_s)
                remaining = deadline - loop.time()
                if job is not None or remaining <= 0:
                    return job
                ready_at = await asyncio.to_thread(self.store.next_ready_at)
                if ready_at is not None:
                    remaining = min(remaining, max(0.01, ready_at - time.time()))
                await self.wakeups.wait(woken, remaining)
            finally:
                self.wakeups.unregister(QUEUE, woken)

    async def events_wait(self, job_id: str, after_seq: int = 0, wait_s: float = 0.0, limit: int = 1000):
        """Events of ``job_id`` after ``after_seq``, waiting up to ``wait_s`` for the next one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            woken = self.wakeups.register(job_id)
            try:
                events = await asyncio.to_thread(self.store.events, job_id, after_seq, limit)
                remaining = deadline - loop.time()
                if events or remaining <= 0:
                    return events
                await self.wakeups.wait(woken, remaining)
            finally:
                self.wakeups.unregister(job_id, woken)

    def complete(self, job_id, worker_id, result, timeline=None):
        return self.store.complete(job_id, worker_id, result, timeline)

    def fail(self, job_id, worker_id, error, retryable, timeline=None):
        return self.store.fail(job_id, worker_id, error, retryable, timeline)

    def cancel(self, job_id):
        return self.store.cancel(job_id)

    def mark_cancelled(self, job_id, worker_id, timeline=None):
        return self.store.mark_cancelled(job_id, worker_id, timeline)

    def events(self, job_id, after_seq=0, limit=1000):
        return self.store.events(job_id, after_seq, limit)

    def queue_stats(self):
        return self.store.queue_stats()

    def workers(self) -> list[dict]:
        """Worker slots that asked for work within one lease period: busy (and with which
        job) or idle. A slot that stopped asking has died or is being replaced."""
        now = time.time()
        if self.redis:  # the workers report to Redis, not here
            seen = self.store.workers_seen(forget_after_s=10 * self.config.lease_s)  # type: ignore[attr-defined]
        else:
            seen = dict(self._seen)  # a snapshot: lease calls add to it from other threads
            for worker in [w for w, at in seen.items() if now - at > 10 * self.config.lease_s]:
                self._seen.pop(worker, None)  # long gone: forget it
        return worker_slots(self.store.list_jobs(JobStatus.RUNNING, limit=1000), seen, self.config, now)

    # -- monitoring ---------------------------------------------------------------------------
    def _on_transition(self, kind: str, job: JobRecord, info: dict) -> None:
        self.wakeups.poke(job.job_id)
        if kind in ("submitted", "retrying"):
            self.wakeups.poke(QUEUE)
        record_transition(kind, job, info)

    def _gauge_loop(self) -> None:
        while not self._stop.wait(self.config.metrics_interval_s):
            try:
                self.record_gauges()
            except Exception:
                log.debug("gauge update failed", exc_info=True)

    def record_gauges(self) -> dict:
        """Queue depth per priority, running jobs and worker slots, as gauges; returns them."""
        stats = self.store.queue_stats()
        for priority, depth in stats["queued"].items():
            metrics.set_gauge("rescored_queue_depth", depth, priority=priority)
        metrics.set_gauge("rescored_jobs_running", stats.get("running", 0))
        workers = self.workers()
        busy = sum(1 for w in workers if w["busy"])
        metrics.set_gauge("rescored_worker_slots", busy, state="busy")
        metrics.set_gauge("rescored_worker_slots", len(workers) - busy, state="idle")
        return {**stats, "workers_busy": busy, "workers_idle": len(workers) - busy}

    def expire_now(self) -> list[str]:
        """Delete expired records and their result files; returns the job ids."""
        expired = self.store.expire()
        for job in expired:
            try:
                self.results.delete_prefix(job.job_id)
            except Exception:
                log.warning("could not delete results of expired job %s", job.job_id, exc_info=True)
        return [job.job_id for job in expired]

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.config.expiry_sweep_s):
            try:
                self.expire_now()
                self.store.requeue_expired()
            except Exception:
                log.warning("expiry sweep failed", exc_info=True)

    def check_health(self) -> None:
        self.store.queue_stats()

    def node_id(self) -> str:
        """The Ray node this replica runs on (tests check where Serve put it)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def actor_name(self) -> str:
        """This replica's Ray actor name (namespace "serve"), for operators and fault tests."""
        import ray

        return str(ray.get_runtime_context().get_actor_name())

    def __del__(self):
        self._stop.set()


def warn_if_not_on_head_node() -> None:
    """A SQLite ledger is a file on this node's disk: if this is not the head node, a restart
    of this replica elsewhere opens an empty ledger. ``build_app`` pins the replica to the
    head; this says so loudly if that was overridden."""
    import ray

    try:
        here = ray.get_runtime_context().get_node_id()
        head = next(
            (n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]), None
        )
    except Exception:
        return
    if head is not None and here != head:
        log.warning(
            "the SQLite ledger runs on node %s, not on the head node %s: if this node goes, every job goes "
            "with it. Use service.ledger: redis://... on a cluster of several nodes.",
            here,
            head,
        )
