"""The SDK follows a job through dropped WebSockets (an ingress replica's node going away):
it opens the stream again, each new stream starts with the job's state, and polling
rides out the service's transient 503s. A real WebSocket server on loopback drops the
first stream with an error and closes the second cleanly before the job's end; the third
carries the job to ``completed``. (The live version is tests/node_loss.py's ingress row.)"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
from websockets.sync.server import serve

from rescored_ray import client as sdk

JOB = "feedface"


@pytest.fixture
def stream_server():
    """Serves ``/api/v1/jobs/{JOB}/stream``; connection n behaves as ``script[n]``."""
    opened: list[int] = []

    def handler(ws):
        n = len(opened)
        opened.append(n)
        ws.send(json.dumps({"type": "state", "job_id": JOB, "status": "running", "progress": 20 + 10 * n}))
        if n == 0:
            raise RuntimeError("the replica's node went away")  # the server closes with 1011
        if n == 1:
            ws.close()  # a clean close before the job's end: a replica shutting down
            return
        ws.send(json.dumps({"type": "progress", "job_id": JOB, "stage": "musicxml", "progress": 95, "message": ""}))
        ws.send(json.dumps({"type": "completed", "job_id": JOB, "progress": 100}))

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.socket.getsockname()[1]}", opened
        server.shutdown()


def status_transport(failures: int) -> httpx.MockTransport:
    """``GET /api/v1/jobs/{JOB}``: ``failures`` 503s (a replica moving), then the finished job."""
    calls = {"n": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= failures:
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "replica moving"}})
        return httpx.Response(200, json={"job_id": JOB, "status": "completed", "progress": 100})

    return httpx.MockTransport(handle)


@pytest.fixture(autouse=True)
def quick_pauses(monkeypatch):
    monkeypatch.setattr(sdk, "STREAM_RETRY_PAUSES_S", (0.05, 0.05, 0.05))
    monkeypatch.setattr(sdk, "_sleep_within", lambda seconds, deadline: None)


def test_wait_reopens_dropped_streams_and_rides_out_503s(stream_server):
    base, opened = stream_server
    client = sdk.Client(base)
    client._http = httpx.Client(base_url=base, transport=status_transport(failures=2))
    job = sdk.Job(client, JOB)
    messages: list[dict] = []
    final = job.wait(timeout=30, progress=False, on_message=messages.append)
    assert final["status"] == "completed"
    assert len(opened) == 3 and job.reconnects == 2
    assert [m["type"] for m in messages] == ["state", "state", "state", "progress", "completed"]
    assert [m["progress"] for m in messages if m["type"] == "state"] == [20, 30, 40]  # each stream starts afresh


def test_async_wait_does_the_same(stream_server):
    base, opened = stream_server

    async def follow() -> tuple[dict, list[dict]]:
        client = sdk.AsyncClient(base)
        client._http = httpx.AsyncClient(base_url=base, transport=status_transport(failures=1))
        messages: list[dict] = []
        final = await sdk.AsyncJob(client, JOB).wait(timeout=30, progress=False, on_message=messages.append)
        await client._http.aclose()
        return final, messages

    final, messages = asyncio.run(follow())
    assert final["status"] == "completed" and len(opened) == 3
    assert [m["type"] for m in messages] == ["state", "state", "state", "progress", "completed"]


def test_a_permanent_refusal_is_not_retried():
    client = sdk.Client("http://127.0.0.1:9")
    calls = {"n": 0}

    def handle(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(404, json={"error": {"code": "job_not_found", "message": "no such job"}})

    client._http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(handle))
    with pytest.raises(sdk.JobNotFound):
        sdk.Job(client, JOB)._status_within(deadline=None)
    assert calls["n"] == 1


def test_a_server_that_refuses_websockets_is_polled_at_once():
    """A proxy that answers the upgrade with a plain 404: no reconnects, straight to polling."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NoWebSockets(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NoWebSockets)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        client = sdk.Client(base)
        client._http = httpx.Client(base_url=base, transport=status_transport(failures=0))
        job = sdk.Job(client, JOB)
        assert job.wait(timeout=30, progress=False)["status"] == "completed"
        assert job.reconnects == 0
    finally:
        server.shutdown()
