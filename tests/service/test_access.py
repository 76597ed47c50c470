"""Auth tokens, per-client isolation and per-client limits, against a real Serve app.

Two clients, alice and bob, each with a token. Limits are small so they trip in seconds:
3 new jobs per hour, 2 jobs queued or running at once, 2 KiB request bodies.
"""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.service_app import deploy, wait_for_job

ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef00"
FAST = {"separation": "none", "stems": ["mix"]}


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    deploy(
        tmp_path_factory.mktemp("access-data"),
        security={"allow_private_networks": True, "api_tokens": {"alice": ALICE, "bob": BOB}},
        limits={"jobs_per_window": 3, "window_s": 3600, "max_active_jobs": 2, "max_body_bytes": 2048},
    )
    base = f"http://127.0.0.1:{serve_port}"
    with (
        httpx.Client(base_url=base, timeout=30) as anonymous,
        httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {ALICE}"}) as alice,
        httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {BOB}"}) as bob,
    ):
        yield {"anonymous": anonymous, "alice": alice, "bob": bob, "port": serve_port}
    serve.delete("rescored")


@pytest.fixture(scope="module")
def alice_job(service, http_server):
    created = service["alice"].post("/api/v1/transcribe", json={"url": http_server.url("chorale.mp3"), "options": FAST})
    assert created.status_code == 201, created.text
    return wait_for_job(service["alice"], created.json()["job_id"])


def test_api_needs_a_valid_token(service):
    anonymous = service["anonymous"]
    for method, path in [
        ("POST", "/api/v1/transcribe"),
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/queue"),
        ("GET", "/api/v1/jobs/0123456789abcdef0123456789abcdef"),
        ("GET", "/api/v1/scores/0123456789abcdef0123456789abcdef"),
    ]:
        response = anonymous.request(method, path, json={"url": "http://x/a.mp3"} if method == "POST" else None)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer" and "token" in response.json()["error"]["message"]
        assert response.json()["error"]["code"] == "unauthorized"
    wrong = anonymous.get("/api/v1/jobs", headers={"Authorization": "Bearer not-a-token-of-anyone-here"})
    assert wrong.status_code == 401
    for path in ["/", "/livez", "/openapi.json", "/static/app.js"]:
        assert anonymous.get(path).status_code == 200, path


def test_a_client_sees_only_its_own_jobs(service, alice_job):
    alice, bob = service["alice"], service["bob"]
    job_id = alice_job["job_id"]
    assert alice_job["status"] == "completed"
    assert alice.get(f"/api/v1/jobs/{job_id}").status_code == 200
    assert alice.get(f"/api/v1/scores/{job_id}").status_code == 200
    for method, path in [
        ("GET", f"/api/v1/jobs/{job_id}"),
        ("GET", f"/api/v1/scores/{job_id}"),
        ("GET", f"/api/v1/scores/{job_id}/midi"),
        ("DELETE", f"/api/v1/jobs/{job_id}"),
    ]:
        response = bob.request(method, path)
        assert response.status_code == 403 and "another client" in response.json()["error"]["message"], (method, path)
        assert response.json()["error"]["code"] == "forbidden"
    assert job_id in [job["job_id"] for job in alice.get("/api/v1/jobs").json()["jobs"]]
    assert job_id not in [job["job_id"] for job in bob.get("/api/v1/jobs").json()["jobs"]]
    # a browser link carries the token as a query parameter
    assert service["anonymous"].get(f"/api/v1/scores/{job_id}", params={"token": ALICE}).status_code == 200
    assert service["anonymous"].get(f"/api/v1/scores/{job_id}", params={"token": BOB}).status_code == 403


def test_websocket_needs_the_owners_token(service, alice_job):
    url = f"ws://127.0.0.1:{service['port']}/api/v1/jobs/{alice_job['job_id']}/stream"
    with pytest.raises(InvalidStatus), ws_connect(url, open_timeout=10) as ws:  # no token: refused at the handshake
        ws.recv(timeout=10)
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {BOB}"}, open_timeout=10) as ws:
        message = ws.recv(timeout=10)
    assert "another client" in message
    with ws_connect(url + f"?token={ALICE}", open_timeout=10) as ws:
        first = json.loads(ws.recv(timeout=10))
    assert first["type"] == "state" and first["job_id"] == alice_job["job_id"]


def test_oversized_and_unsized_bodies_are_refused(service):
    big = {"url": "http://example.com/" + "a" * 3000}
    response = service["alice"].post("/api/v1/transcribe", json=big)
    assert response.status_code == 413 and "2048" in response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "payload_too_large"

    def chunks():
        yield b'{"url": "http://example.com/a.mp3"}'

    unsized = service["alice"].post(
        "/api/v1/transcribe", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert unsized.status_code == 411


def test_rate_limit_per_client_with_retry_after(service, http_server, alice_job):
    alice, bob = service["alice"], service["bob"]
    # alice_job was her first new job of the hour; two more fit, the next is refused
    for n in (1, 2):
        created = alice.post(
            "/api/v1/transcribe", json={"url": http_server.url(f"status/404/rate-{n}.mp3"), "options": FAST}
        )
        assert created.status_code == 201, created.text
        wait_for_job(alice, created.json()["job_id"])
    refused = alice.post("/api/v1/transcribe", json={"url": http_server.url("status/404/rate-3.mp3"), "options": FAST})
    assert refused.status_code == 429
    body = refused.json()
    assert body["error"]["code"] == "rate_limited"
    assert "rate limit" in body["error"]["message"] and 3000 < body["retry_after_seconds"] <= 3600
    assert refused.headers["retry-after"] == str(body["retry_after_seconds"])
    # a duplicate is no new work: it joins the existing job instead of counting
    again = alice.post("/api/v1/transcribe", json={"url": http_server.url("chorale.mp3"), "options": FAST})
    assert again.status_code == 201 and again.json()["deduplicated"] and again.json()["job_id"] == alice_job["job_id"]
    # limits are per client: bob is not affected, and does not join alice's job
    bobs = bob.post("/api/v1/transcribe", json={"url": http_server.url("chorale.mp3"), "options": FAST})
    assert bobs.status_code == 201 and not bobs.json()["deduplicated"]
    wait_for_job(bob, bobs.json()["job_id"])


def test_active_jobs_per_client_are_capped(service, http_server):
    bob = service["bob"]
    slow = [
        bob.post(
            "/api/v1/transcribe", json={"url": http_server.url(f"delay/4/chorale.mp3?active={n}"), "options": FAST}
        )
        for n in (1,)
    ]
    assert all(r.status_code == 201 for r in slow)
    # bob has 1 slow job (+1 finished); one more may be active, then the cap of 2 holds
    second = bob.post(
        "/api/v1/transcribe", json={"url": http_server.url("delay/4/chorale.mp3?active=2"), "options": FAST}
    )
    assert second.status_code == 201
    third = bob.post(
        "/api/v1/transcribe", json={"url": http_server.url("delay/4/chorale.mp3?active=3"), "options": FAST}
    )
    assert third.status_code == 429 and "queued or running" in third.json()["error"]["message"]
    assert third.json()["retry_after_seconds"] >= 1
    for created in [*slow, second]:
        wait_for_job(bob, created.json()["job_id"])
