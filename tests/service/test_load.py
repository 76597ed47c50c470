"""A burst against the real service: 500 submissions from 50 concurrent clients.

Each client has its own API token and may start 5 new jobs per hour, so about half the
burst is refused with 429 and the rest queues. Every submission must get 201 or 429,
the queue must drain (the jobs point at a loopback 404: each fails at once, for good),
no accepted job may be lost, and the ingress's memory must stay flat: its resident size
after the burst is compared with its size after a warm-up burst of the same shape (50
connections, 500 submissions) sent with one token, so that only 5 of them become jobs.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest

from tests.service_app import deploy, replica

CLIENTS, PER_CLIENT, ALLOWED = 50, 10, 5
TOKENS = {f"client{n:02d}": f"load-token-{n:02d}-0123456789abcdef" for n in range(CLIENTS)}
WARMUP_TOKEN = "warm-token-0123456789abcdef"
WARMUP = {f"warm{n:02d}": WARMUP_TOKEN for n in range(CLIENTS)}  # 50 connections, one client


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    deploy(
        tmp_path_factory.mktemp("load-data"),
        worker_slots=2,
        security={"allow_private_networks": True, "api_tokens": {**TOKENS, "warm": WARMUP_TOKEN}},
        limits={"jobs_per_window": ALLOWED, "window_s": 3600, "max_active_jobs": None},
    )
    yield f"http://127.0.0.1:{serve_port}"
    serve.delete("rescored")


async def burst(base: str, tokens: dict[str, str], url: str, tag: str) -> list[tuple[str, int, dict]]:
    """Every client sends PER_CLIENT submissions, all clients at once."""

    async def one_client(name: str, token: str) -> list[tuple[str, int, dict]]:
        async with httpx.AsyncClient(base_url=base, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
            replies = []
            for index in range(PER_CLIENT):
                response = await http.post(
                    "/api/v1/transcribe",
                    json={
                        "url": f"{url}/{tag}-{name}-{index}.mp3",
                        "options": {"separation": "none", "stems": ["mix"]},
                    },
                )
                replies.append((name, response.status_code, response.json()))
            return replies

    results = await asyncio.gather(*(one_client(name, token) for name, token in tokens.items()))
    return [reply for replies in results for reply in replies]


def ingress_rss() -> int:
    return psutil.Process(replica("Ingress").pid).memory_info().rss


def drain(base: str, replies, timeout: float = 300) -> dict[str, dict]:
    """Wait until every accepted job is finished; returns them by id (each seen by its owner)."""
    owners = {body["job_id"]: name for name, status, body in replies if status == 201}
    tokens = {**TOKENS, **WARMUP}
    deadline = time.monotonic() + timeout
    jobs: dict[str, dict] = {}
    with httpx.Client(base_url=base, timeout=30) as http:
        while time.monotonic() < deadline and len(jobs) < len(owners):
            for job_id, owner in owners.items():
                if job_id in jobs:
                    continue
                response = http.get(f"/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {tokens[owner]}"})
                if response.status_code == 200 and response.json()["status"] in ("completed", "failed", "cancelled"):
                    jobs[job_id] = response.json()
            time.sleep(0.5)
    return jobs


def test_a_burst_of_500_is_answered_drained_and_nothing_is_lost(service, http_server):
    started = time.monotonic()
    warmup = asyncio.run(burst(service, WARMUP, http_server.url("status/404"), "warm"))
    assert sum(1 for _, status, _ in warmup if status == 201) == ALLOWED
    drain(service, warmup)
    before = ingress_rss()

    replies = asyncio.run(burst(service, TOKENS, http_server.url("status/404"), "load"))
    statuses = [status for _, status, _ in replies]
    assert len(replies) == CLIENTS * PER_CLIENT == 500
    assert set(statuses) <= {201, 429}, sorted(set(statuses))
    accepted = [body["job_id"] for _, status, body in replies if status == 201]
    assert len(accepted) == CLIENTS * ALLOWED  # exactly the limit per client, under contention too
    assert all("retry_after_seconds" in body for _, status, body in replies if status == 429)
    assert len(set(accepted)) == len(accepted)

    jobs = drain(service, replies)
    lost = set(accepted) - set(jobs)
    assert not lost, f"{len(lost)} accepted jobs never finished"
    assert {job["status"] for job in jobs.values()} == {"failed"}
    assert all(job["error"]["stage"] == "download" and job["error"]["retryable"] is False for job in jobs.values())
    queue = httpx.get(f"{service}/api/v1/queue", headers={"Authorization": f"Bearer {TOKENS['client00']}"}).json()
    assert queue["running"] == 0 and not any(queue["queued"].values())

    growth = ingress_rss() - before
    print(
        f"burst: 500 submissions, {len(accepted)} accepted, drained in {time.monotonic() - started:.1f} s "
        f"(with warm-up); ingress RSS growth {growth / 2**20:.1f} MiB"
    )
    assert growth < 25 * 2**20, f"ingress grew by {growth / 2**20:.1f} MiB over one burst"
