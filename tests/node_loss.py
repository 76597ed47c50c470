"""The service's node-loss fault matrix, on a real multi-node Ray cluster on one machine.

A head and two worker nodes (``ray.cluster_utils.Cluster``: each node its own raylet, object
store and worker processes), the Redis ledger (a real ``redis-server``, AOF with
``appendfsync always``), results on S3 (moto's server on loopback), inputs from a loopback
HTTP server. Serve's proxy runs on the head only (every node here shares one address); the two
ingress replicas, the two worker slots and the model replicas live on the worker nodes. Four
faults, one after the other, on the same running service:

1. ``worker_node_lost``: the node running a job is killed (SIGKILL, no drain) mid-separation.
2. ``ingress_node_lost``: the node of an ingress replica is killed while SDK clients stream
   the jobs' progress through it; the SDK opens its stream again and sees each job finish.
3. ``redis_kill9``: ``redis-server`` killed with -9, jobs queued and running, restarted from its AOF.
4. ``app_redeployed``: the whole Serve app deleted with jobs queued and running, then deployed again.

After a node is lost a fresh one joins (what an autoscaler does), so every row starts with
two worker nodes. Each row counts submitted / completed / failed / lost / duplicated jobs
(duplicated: more than one completed attempt, or more than one ``completed`` event in the
job's log) and keeps the job records that explain them. A driver connects to one cluster and
the test session's Ray is another, so this runs as its own process:

    python -m tests.node_loss --media DIR [--out matrix.json]

``DIR`` holds ``mix.wav`` and ``chorale.mp3``/``chorale.ogg`` (the test session's media
folder); tests/service/test_node_loss.py runs it and checks the matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.media import MediaServer, read_wav, write_wav
from tests.redis_server import RedisServer, free_port
from tests.s3_server import S3Server

FAST = {"separation": "none", "stems": ["mix"]}
TERMINAL = {"completed", "failed", "cancelled"}
WORKER_NODE = {"num_cpus": 4, "object_store_memory": 300 * 1024**2}
SYSTEM_CONFIG = {
    # a killed node is declared dead after about 3 s, not Ray's default 15 s
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
    # a node that joins starts workers when replicas need them, not four idle ones on 2 cores
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
}
SERVICE = {
    "ingress_replicas": 2,
    "ingress_replicas_per_node": 1,  # one ingress replica per node: a lost node takes one
    "worker_slots": 2,
    "lease_s": 3.0,
    "heartbeat_s": 0.5,
    # the faults, not a loaded 2-core machine's first notation (numba's warm-up), decide each row
    "soft_time_limit_s": 120.0,
    "hard_time_limit_s": 240.0,
}
ROW_TIMEOUT_S = 240.0


@dataclass
class Row:
    fault: str
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    scores_served: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)


class NodeLossRun:
    """One cluster, one service, the four faults in turn."""

    def __init__(self, media: MediaServer, redis: RedisServer, s3: S3Server, workdir: Path):
        from ray.cluster_utils import Cluster

        self.media, self.redis, self.s3, self.workdir = media, redis, s3, workdir
        self.temp_dir = Path(os.environ["RAY_TMPDIR"]) / "ray"  # main() made it: short, and this cluster's own
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,  # the head keeps Serve's controller and proxy; no replica needs a CPU there
                "include_dashboard": True,  # the state API (which node holds which replica)
                "dashboard_port": free_port(),
                "temp_dir": str(self.temp_dir),
                "_system_config": SYSTEM_CONFIG,
            },
        )
        for _ in range(2):
            self.add_worker_node()
        self.cluster.wait_for_nodes()
        self.cluster.connect(namespace="node-loss")
        self.port = free_port()
        self.results_uri = s3.uri("node-loss", "results")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    # -- cluster -----------------------------------------------------------------------------

    def add_worker_node(self):
        return self.cluster.add_node(**WORKER_NODE, temp_dir=str(self.temp_dir))

    def lose_node(self, node_id: str, actors: list | None = None) -> list[str]:
        """Kill one worker node outright (SIGKILL: no drain, no goodbye), wait until Ray calls
        it dead, then let a fresh node join; returns the replicas that lived on it (from
        ``actors``, a listing read earlier, when the kill must not wait for the state API)."""
        import ray

        node = next(n for n in self.cluster.worker_nodes if n.node_id == node_id)
        actors = self.alive_actors() if actors is None else actors
        residents = sorted(a.name for a in actors if a.node_id == node_id and a.name)
        self.cluster.remove_node(node, allow_graceful=False)
        deadline = time.monotonic() + 60
        while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray never declared node {node_id} dead")
            time.sleep(0.2)
        self.add_worker_node()
        return residents

    def alive_actors(self):
        from ray.util.state import list_actors

        return list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)

    def replica_node(self, deployment: str, pid: int | None = None, actors: list | None = None) -> str:
        """Node id of a live replica of ``deployment`` (the one with process ``pid``, if given)
        that is on a worker node (looked up in ``actors`` when given)."""
        workers = {n.node_id for n in self.cluster.worker_nodes}
        for actor in self.alive_actors() if actors is None else actors:
            ours = f"rescored#{deployment}#" in (actor.name or "") and actor.node_id in workers
            if ours and (pid is None or actor.pid == pid):
                return actor.node_id
        raise LookupError(f"no live {deployment} replica (pid {pid}) on a worker node")

    # -- service -----------------------------------------------------------------------------

    def deploy(self) -> None:
        from tests.service_app import deploy

        deploy(
            self.workdir / "data",
            pipeline={"separation": {"segment": 2.0}, "write_preview": False},
            ledger=self.redis.url(0),
            storage_uri=self.results_uri,
            **SERVICE,
        )

    def start_service(self) -> None:
        from ray import serve

        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": self.port})
        self.deploy()

    def submit(self, path: str, query: str, options: dict | None = None) -> str:
        """Submit the served file ``path``; ``query`` makes the URL (so the job) unique."""
        url = f"{self.media.url(path)}?{query}"
        response = self.http.post("/api/v1/transcribe", json={"url": url, "options": options or FAST})
        response.raise_for_status()
        return response.json()["job_id"]

    def job(self, job_id: str) -> dict | None:
        """The job's record, or None while the service cannot answer (a fault in progress)."""
        try:
            response = self.http.get(f"/api/v1/jobs/{job_id}")
        except httpx.HTTPError:
            return None
        if response.status_code == 404:
            return {"job_id": job_id, "status": "missing"}
        return response.json() if response.status_code == 200 else None

    def wait_until(self, job_id: str, predicate, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job is not None and predicate(job):
                return job
            if job is not None and job["status"] in TERMINAL | {"missing"}:
                raise AssertionError(f"job {job_id} ended before the fault could hit it: {job['status']}")
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} never reached the awaited state")

    def account(self, row: Row, job_ids: list[str], started: float) -> Row:
        """Wait for every job to end (or the row's time to run out), then count."""
        import redis

        store = redis.Redis.from_url(self.redis.url(0), decode_responses=True)
        deadline = time.monotonic() + ROW_TIMEOUT_S
        final: dict[str, dict] = {}
        while len(final) < len(job_ids) and time.monotonic() < deadline:
            for job_id in job_ids:
                if job_id not in final:
                    job = self.job(job_id)
                    if job is not None and job["status"] in TERMINAL | {"missing"}:
                        final[job_id] = job
            time.sleep(0.25)
        row.submitted = len(job_ids)
        for job_id in job_ids:
            job = final.get(job_id) or {"job_id": job_id, "status": "unfinished", "attempts": []}
            attempts = job.get("attempts") or []
            completions = [a for a in attempts if a["outcome"] == "completed"]
            events = [json.loads(e)["type"] for e in store.lrange(f"job:{job_id}:events", 0, -1)]
            duplicated = len(completions) > 1 or events.count("completed") > 1
            row.completed += job["status"] == "completed"
            row.failed += job["status"] == "failed"
            row.lost += job["status"] in ("missing", "unfinished")
            row.duplicated += duplicated
            if job["status"] == "completed":
                row.scores_served += self.http.get(f"/api/v1/scores/{job_id}").status_code == 200
            row.jobs.append(
                {
                    "job_id": job_id,
                    "source": job.get("source"),
                    "status": job["status"],
                    "attempts": [
                        {
                            "outcome": a["outcome"],
                            "stage": a.get("stage"),
                            "error": (a.get("error") or {}).get("type"),
                            "worker": a.get("worker"),
                        }
                        for a in attempts
                    ],
                    "completed_events": events.count("completed"),
                }
            )
        store.close()
        row.seconds = round(time.monotonic() - started, 1)
        return row

    # -- the four faults ---------------------------------------------------------------------

    def worker_node_lost(self) -> Row:
        row, started = Row("worker_node_lost"), time.monotonic()
        actors = self.alive_actors()  # read first: once separation starts, only the kill may wait
        separating = self.submit("node-loss/long-mix.wav", "row=1", {"stems": ["other"]})
        other = self.submit("chorale.mp3", "row=1")
        from tests.service_app import wait_for_stage  # imports ray: not before main() set its environment

        wait_for_stage(str(self.http.base_url), separating, "separation")  # a poll can miss it
        job = self.job(separating)
        assert job is not None, f"job {separating} did not answer"
        worker_pid = int(job["attempts"][-1]["worker"].split("-")[1])  # worker-<pid>-<hex>
        node = self.replica_node("PipelineWorker", pid=worker_pid, actors=actors)
        row.details["node_residents"] = self.lose_node(node, actors)
        return self.account(row, [separating, other], started)

    def ingress_node_lost(self) -> Row:
        from rescored_ray.client import Client

        row, started = Row("ingress_node_lost"), time.monotonic()
        job_ids = [self.submit("delay/3/chorale.mp3", f"row=2&i={i}") for i in range(4)]
        sdk = Client(str(self.http.base_url))
        messages: dict[str, list[dict]] = {job_id: [] for job_id in job_ids}
        outcomes: dict[str, Any] = {}

        def follow(job_id: str) -> None:
            job = sdk.get(job_id)
            try:
                outcomes[job_id] = {
                    "status": job.wait(timeout=ROW_TIMEOUT_S, progress=False, on_message=messages[job_id].append)[
                        "status"
                    ]
                }
            except Exception as exc:  # recorded: the row shows what a user saw
                outcomes[job_id] = {"status": f"raised {type(exc).__name__}: {exc}"}
            outcomes[job_id]["reconnects"] = job.reconnects

        threads = [threading.Thread(target=follow, args=(job_id,), daemon=True) for job_id in job_ids]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while not all(messages.values()):  # every stream open and past its first message
            if time.monotonic() > deadline:
                raise TimeoutError("the SDK streams never opened")
            time.sleep(0.1)
        row.details["node_residents"] = self.lose_node(self.replica_node("Ingress"))
        for thread in threads:
            thread.join(ROW_TIMEOUT_S + 30)
        sdk.close()
        row.details["sdk"] = outcomes
        row.details["sdk_completed"] = sum(o["status"] == "completed" for o in outcomes.values())
        row.details["sdk_reconnects"] = sum(o["reconnects"] for o in outcomes.values())
        return self.account(row, job_ids, started)

    def redis_kill9(self) -> Row:
        row, started = Row("redis_kill9"), time.monotonic()
        running = self.submit("delay/3/chorale.mp3", "row=3")
        self.wait_until(running, lambda j: j["status"] == "running")
        queued = [self.submit("chorale.ogg", f"row=3&q={i}") for i in range(3)]
        self.redis.kill9()
        time.sleep(1.0)
        self.redis.start()  # same port and folder: it replays the append-only file
        return self.account(row, [running, *queued], started)

    def app_redeployed(self) -> Row:
        from ray import serve

        row, started = Row("app_redeployed"), time.monotonic()
        job_ids = [self.submit("delay/3/chorale.mp3", f"row=4&i={i}") for i in range(4)]
        self.wait_until(job_ids[0], lambda j: j["status"] == "running")
        serve.delete("rescored")
        self.deploy()
        return self.account(row, job_ids, started)

    def shutdown(self) -> None:
        import ray
        from ray import serve

        self.http.close()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()
            shutil.rmtree(self.temp_dir.parent, ignore_errors=True)


def long_mix(media_root: Path) -> Path:
    """The band mix twice over (31.5 s): its separation lasts long enough to be cut."""
    path = media_root / "node-loss" / "long-mix.wav"
    if not path.exists():
        samples, rate = read_wav(media_root / "mix.wav")
        path.parent.mkdir(exist_ok=True)
        write_wav(path, np.tile(samples, (2, 1)), rate)
    return path


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | submitted | completed | failed | lost | duplicated | scores served | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.fault} | {r.submitted} | {r.completed} | {r.failed} | {r.lost} | {r.duplicated} "
            f"| {r.scores_served} | {r.seconds} |"
        )
    return "\n".join(lines)


def run(media_root: Path, workdir: Path) -> dict[str, Any]:
    long_mix(media_root)
    with ExitStack() as stack:
        media = stack.enter_context(MediaServer(media_root))
        redis = RedisServer(workdir / "redis", appendfsync="always").start()
        stack.callback(redis.stop)
        s3 = S3Server().start()
        stack.callback(s3.stop)
        t0 = time.monotonic()
        nodes = NodeLossRun(media, redis, s3, workdir)
        stack.callback(nodes.shutdown)
        nodes.start_service()
        ready_s = round(time.monotonic() - t0, 1)
        rows = [nodes.worker_node_lost(), nodes.ingress_node_lost(), nodes.redis_kill9(), nodes.app_redeployed()]
        healthy = nodes.http.get("/healthz").status_code == 200
    return {"cluster_ready_s": ready_s, "healthy_after": healthy, "rows": [asdict(r) for r in rows]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--media", type=Path, required=True, help="folder with mix.wav, chorale.mp3, chorale.ogg")
    parser.add_argument("--out", type=Path, help="write the matrix (with every job record) here as JSON")
    parser.add_argument("--workdir", type=Path, help="Redis data, the service's data dir (default: a temp dir)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="node-loss-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Serve's proxy sends each request to a replica on its own node when it can; with the proxy on
    # the head only, that would keep every stream off the worker nodes this run takes away
    os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        token = workdir / "ray_token"  # token auth on, as on a real cluster, with this cluster's own token
        token.write_text(secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported: nothing above imports it
    # Ray's temp dir, and the "current cluster" address file in it, stay this cluster's own (and short:
    # Ray's socket paths must fit 107 bytes), so no other Ray on the machine is pointed at this one
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rrnl_", dir="/tmp")
    result = run(args.media.resolve(), workdir)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    rows = [Row(**r) for r in result["rows"]]
    print(table(rows))
    print(f"cluster and service ready in {result['cluster_ready_s']} s; healthy after: {result['healthy_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
