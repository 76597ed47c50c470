"""Serve submission latency under concurrency, and orchestration overhead per job.

    .venv/bin/python bench/serve_latency.py [--levels 1,16,64] [--requests 320] [--jobs 8]
        [--ledger redis://127.0.0.1:6379/0] [--ingress-replicas 2]

Starts a local service (separation off, one worker slot, loopback allowed). Latency: each
level runs ``--requests`` POST /api/v1/transcribe calls from that many concurrent clients
(distinct URLs, so no deduplication; they point at a loopback 404, so queued jobs fail fast
and the queue drains); p50/p99 of the HTTP round trip. The same level against GET /livez
(the ingress answers without asking the ledger) is the floor: what Serve's HTTP proxy and
one ingress replica cost on this machine, before any of our work. Overhead: ``--jobs`` real jobs
(examples/chorale.mp3 over loopback) one after another; submit-to-complete wall time minus
the pipeline's own stage timings (download .. outputs) is what Ray, Serve, the ledger and
the WebSocket add per job. ``--ledger`` picks the job store (default: SQLite in the temp
data dir); with a Redis URL the ingress and the worker talk to Redis directly, and
``--ingress-replicas`` may be more than one.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def submissions(
    base: str, files_url: str, clients: int, total: int, tag: str, floor: bool = False
) -> list[float]:
    """Round trips of ``total`` submissions (or GET /livez when ``floor``) from ``clients`` at once."""
    latencies: list[float] = []
    counter = iter(range(total))

    async def one_client(http: httpx.AsyncClient) -> None:
        for index in counter:
            body = {
                "url": f"{files_url}/missing-{tag}-{index}.mp3",
                "options": {"separation": "none", "stems": ["mix"]},
            }
            started = time.perf_counter()
            response = await (http.get("/livez") if floor else http.post("/api/v1/transcribe", json=body))
            latencies.append(time.perf_counter() - started)
            assert response.status_code in (200, 201, 429), response.text

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        await asyncio.gather(*(one_client(http) for _ in range(clients)))
    return latencies


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) of round trips, in seconds."""
    ordered = sorted(latencies)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def wait_idle(base: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, timeout=30) as http:
        while time.monotonic() < deadline:
            queue = http.get("/api/v1/queue").json()
            if queue["running"] == 0 and not any(queue["queued"].values()):
                return
            time.sleep(0.5)
    raise TimeoutError("queue did not drain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--requests", type=int, default=320, help="submissions per level")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--ledger", default=None, help="sqlite:///PATH or redis://HOST:PORT/DB (default: SQLite)")
    parser.add_argument("--ingress-replicas", type=int, default=1)
    args = parser.parse_args()

    from rescored_ray.client import Client
    from rescored_ray.service.runner import serve_folder, start_service, stop_service
    from rescored_ray.settings import load_settings

    with tempfile.TemporaryDirectory(prefix="rescored_latency_") as tmp:
        config = load_settings(
            env={},
            overrides={
                "service": {
                    "data_dir": tmp,
                    "worker_slots": 1,
                    "ledger": args.ledger,
                    "ledger_prefix": f"bench-{time.time_ns()}:",  # a fresh keyspace on a shared Redis
                    "ingress_replicas": args.ingress_replicas,
                    "security": {"allow_private_networks": True},
                    "limits": {"jobs_per_window": None, "max_active_jobs": None},  # one address sends everything
                },
                "pipeline": {
                    "separation": {"model": "none"},
                    "transcription": {"stems": ["mix"]},
                    "write_preview": False,
                },
            },
        )
        files, files_url = serve_folder(REPO / "examples")
        try:
            base = start_service(config, port=free_port(), dashboard=False)
            rows = []
            for level in [int(x) for x in args.levels.split(",")]:
                floor = percentiles(asyncio.run(submissions(base, files_url, level, args.requests, "", floor=True)))
                latencies = asyncio.run(submissions(base, files_url, level, args.requests, f"c{level}"))
                rows.append((level, len(latencies), *percentiles(latencies), *floor))
                wait_idle(base)
            overheads = []
            with Client(base) as client:
                for index in range(args.jobs):
                    started = time.perf_counter()
                    job = client.submit(f"{files_url}/chorale.mp3?run={index}", separation="none", stems=["mix"])
                    view = job.wait(progress=False)
                    wall = time.perf_counter() - started
                    compute = sum((view["result"] or {}).get("timings", {}).values())
                    overheads.append((wall, compute, wall - compute))
        finally:
            files.shutdown()
            stop_service()

    print(f"\nledger: {config.service.ledger_url}, ingress replicas: {args.ingress_replicas}")
    print(
        f"{'clients':>8}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}{'floor p50':>11}{'floor p99':>11}{'p99/floor':>11}"
    )
    for level, count, p50, p99, floor50, floor99 in rows:
        print(
            f"{level:>8}{count:>10}{1000 * p50:>9.1f}{1000 * p99:>9.1f}{1000 * floor50:>11.1f}"
            f"{1000 * floor99:>11.1f}{p99 / floor99:>10.2f}x"
        )
    walls, computes, extra = zip(*overheads, strict=False)
    print(
        f"orchestration overhead per job (median of {len(overheads)}): submit-to-complete "
        f"{statistics.median(walls):.3f} s - pipeline compute {statistics.median(computes):.3f} s = "
        f"{1000 * statistics.median(extra):.0f} ms"
    )


if __name__ == "__main__":
    main()
