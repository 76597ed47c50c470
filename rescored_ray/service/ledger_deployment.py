"""The ledger as a Serve deployment: one replica owning the SQLite job store.

Serve restarts the replica if it dies; the new one reopens the same WAL database,
so queued, running and finished jobs survive (running ones are re-queued when their
lease expires). It also sweeps expired results: records and their files.
"""

from __future__ import annotations

import logging
import threading

from ray import serve

from rescored_ray.service.config import ServiceConfig
from rescored_ray.service.ledger import SQLiteJobStore
from rescored_ray.storage import ResultStore

log = logging.getLogger(__name__)


@serve.deployment(name="Ledger", num_replicas=1, max_ongoing_requests=256, health_check_period_s=5)
class LedgerDeployment:
    def __init__(self, config: dict):
        self.config = ServiceConfig.model_validate(config)
        self.config.data_path.mkdir(parents=True, exist_ok=True)
        self.store = SQLiteJobStore(
            self.config.data_path / "ledger.sqlite3",
            max_retries=self.config.max_retries,
            backoff_base_s=self.config.backoff_base_s,
            backoff_max_s=self.config.backoff_max_s,
            failed_ttl_s=self.config.failed_ttl_s,
            result_ttl_s=self.config.result_ttl_s,
        )
        self.results = ResultStore(self.config.results_uri)
        self._stop = threading.Event()
        threading.Thread(target=self._sweep_loop, name="ledger-expiry", daemon=True).start()

    # Every JobStore method, served as-is (see rescored_ray.service.ledger).
    def submit(self, source, dedup_key, options, priority="default"):
        return self.store.submit(source, dedup_key, options, priority)

    def get(self, job_id):
        return self.store.get(job_id)

    def list_jobs(self, status=None, limit=100):
        return self.store.list_jobs(status, limit)

    def lease(self, worker_id, lease_s):
        return self.store.lease(worker_id, lease_s)

    def heartbeat(self, job_id, worker_id, lease_s):
        return self.store.heartbeat(job_id, worker_id, lease_s)

    def update_progress(self, job_id, worker_id, percent, stage, message):
        return self.store.update_progress(job_id, worker_id, percent, stage, message)

    def complete(self, job_id, worker_id, result):
        return self.store.complete(job_id, worker_id, result)

    def fail(self, job_id, worker_id, error, retryable):
        return self.store.fail(job_id, worker_id, error, retryable)

    def cancel(self, job_id):
        return self.store.cancel(job_id)

    def mark_cancelled(self, job_id, worker_id):
        return self.store.mark_cancelled(job_id, worker_id)

    def events(self, job_id, after_seq=0, limit=1000):
        return self.store.events(job_id, after_seq, limit)

    def queue_stats(self):
        return self.store.queue_stats()

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

    def actor_name(self) -> str:
        """This replica's Ray actor name (namespace "serve"), for operators and fault tests."""
        import ray

        return ray.get_runtime_context().get_actor_name()

    def __del__(self):
        self._stop.set()
