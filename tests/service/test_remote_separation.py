"""Separation in the Separator replica honours the job's checkpoint, through the HTTP API.

Demucs (``demucs_unittest`` cut into 1 s chunks: about 480 for a 6-minute recording, some
20 s of work) runs in the Separator deployment while the job runs in a PipelineWorker. Its progress must reach
the job in steps, and a cancellation or the soft time limit must stop Demucs inside the
replica between two chunks, not after the song.
"""

import json
import time

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect as ws_connect

from tests.media import read_wav, write_wav
from tests.service_app import deploy, wait_for_job

SOFT_LIMIT_S = 15.0  # past download and decode on a loaded machine, short of the ~20 s Demucs needs
LONG_S = 360.0
CHUNKS = int(LONG_S / 0.75)  # 1 s chunks, 25 % overlap
SEPARATED = {"stems": ["other", "bass"]}


@pytest.fixture(scope="module")
def long_recording(chorale, media_dir, http_server) -> str:
    """The chorale over and over for six minutes, served over loopback: a song Demucs needs a while for."""
    samples, rate = read_wav(chorale.path)
    path = media_dir / "remote-separation" / "long-chorale.wav"
    path.parent.mkdir(exist_ok=True)
    write_wav(path, np.tile(samples, (int(LONG_S * rate / len(samples)) + 1, 1))[: int(LONG_S * rate)], rate)
    return http_server.url(path.relative_to(media_dir).as_posix())


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    deploy(
        tmp_path_factory.mktemp("remote-separation"),
        soft_time_limit_s=SOFT_LIMIT_S,
        pipeline={"separation": {"segment": 1.0}, "write_preview": False},
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=30) as client:
        yield client
    serve.delete("rescored")


def separator_info() -> dict:
    from ray import serve

    return serve.get_deployment_handle("Separator", app_name="rescored").info.remote().result()


def chunks_settled(wait_s: float = 3.0, within_s: float = 20.0) -> tuple[int, int]:
    """Two reads of the replica's chunk count ``wait_s`` apart: the first pair that agree (Demucs
    has stopped), or the last pair after ``within_s``. The stop reaches the replica
    asynchronously (Serve cancels its generator), so the first read may still see a chunk land."""
    deadline = time.monotonic() + within_s
    before = separator_info()["chunks"]
    while True:
        time.sleep(wait_s)
        after = separator_info()["chunks"]
        if after == before or time.monotonic() > deadline:
            return before, after
        before = after


def submit(client, url) -> dict:
    response = client.post("/api/v1/transcribe", json={"url": url, "options": SEPARATED})
    assert response.status_code == 201, response.text
    return response.json()


def test_progress_streams_in_steps_and_cancel_stops_demucs_between_chunks(service, long_recording):
    before = separator_info()
    created = submit(service, long_recording + "?cancel=1")
    separation_steps: list[int] = []
    messages = []
    with ws_connect(created["websocket_url"], open_timeout=10) as ws:
        for raw in ws:
            message = json.loads(raw)
            messages.append(message)
            if message["type"] == "progress" and message["stage"] == "separation" and 20 < message["progress"] < 50:
                separation_steps.append(message["progress"])
                if len(separation_steps) == 3:  # three chunks in: cancel mid-song
                    assert service.delete(f"/api/v1/jobs/{created['job_id']}").json()["cancel_requested"]
    assert messages[-1]["type"] == "cancelled"
    assert separation_steps == sorted(separation_steps) and len(set(separation_steps)) >= 3, separation_steps
    job = wait_for_job(service, created["job_id"])
    assert job["status"] == "cancelled" and job["progress"] < 50
    assert job["attempts"][-1]["stage"] == "separation"
    settled = chunks_settled()
    after = separator_info()
    assert after["stopped"] == before["stopped"] + 1  # the replica was told, and stopped Demucs
    assert after["songs"] == before["songs"]  # the song was never finished
    assert settled[0] == settled[1], f"Demucs kept running after the cancel: {settled}"
    assert after["chunks"] - before["chunks"] < CHUNKS / 2  # it stopped mid-song


def test_soft_time_limit_stops_demucs_in_the_replica(service, long_recording):
    before = separator_info()
    created = submit(service, long_recording + "?limit=1")
    job = wait_for_job(
        service,
        created["job_id"],
        timeout=120,
        predicate=lambda j: bool(j["attempts"]) and j["attempts"][0]["outcome"] is not None,
    )
    first = job["attempts"][0]
    assert first["outcome"] == "retrying", " ".join(f"{s['stage']}={s['seconds']}" for s in job["timeline"])
    assert separator_info()["chunks"] - before["chunks"] < CHUNKS
    assert first["error"]["type"] == "TimeLimitExceeded" and first["error"]["code"] == "time_limit_exceeded"
    assert first["stage"] == "separation"
    assert first["ended_at"] - first["started_at"] < SOFT_LIMIT_S + 6  # a chunk and the acknowledgement late
    service.delete(f"/api/v1/jobs/{created['job_id']}")
    assert wait_for_job(service, created["job_id"], timeout=120)["status"] == "cancelled"
    settled = chunks_settled()
    after = separator_info()
    assert after["stopped"] >= before["stopped"] + 1 and after["songs"] == before["songs"]
    assert settled[0] == settled[1], f"Demucs kept running after the time limit: {settled}"
