"""The Python SDK against a real local Serve app (small models): Client, AsyncClient, Score,
the SDK's CLI commands, in-process ``transcribe``, and batch runs through the Ray Jobs API."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import music21
import numpy as np
import pytest
import soundfile

import rescored_ray
from rescored_ray.client import AsyncClient, Client, JobFailed, JobNotFound, ServiceError
from tests.scoring import onset_f1
from tests.service_app import deploy

pytestmark = pytest.mark.slow
FAST = {"separation": "none", "stems": ["mix"]}


@pytest.fixture(scope="module")
def base_url(serve_port, tmp_path_factory):
    from ray import serve

    deploy(tmp_path_factory.mktemp("sdk-service"))
    yield f"http://127.0.0.1:{serve_port}"
    serve.delete("rescored")


@pytest.fixture(scope="module")
def client(base_url):
    with Client(base_url) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def chorale_url(http_server, chorale_encoded, media_dir):
    """Served after a 1 s pause: the SDK opens the job's stream once the POST has returned, and a
    stream starts from the job's state then, so without the pause a quick job could be past its
    download stage before anyone listens."""
    return http_server.url(f"delay/1/{chorale_encoded['mp3'].relative_to(media_dir).as_posix()}")


@pytest.fixture(scope="module")
def finished(client, chorale_url):
    """One job followed to the end; its messages in arrival order."""
    job = client.submit(chorale_url, **FAST)
    messages = list(job.events(timeout=180))
    return job, messages


def test_progress_messages_arrive_in_order(finished):
    job, messages = finished
    assert messages[0]["type"] == "state" and messages[-1]["type"] == "completed"
    progress = [m["progress"] for m in messages if m["type"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == 100 and len(progress) >= 4
    stages = [m["stage"] for m in messages if m["type"] == "progress"]
    assert stages.index("download") < stages.index("transcription") < stages.index("musicxml")
    assert job.final["status"] == "completed"


def test_result_is_a_score_with_real_notes(finished, chorale, tmp_path):
    job, _ = finished
    score = job.result()
    assert score.job_id == job.id and score.key and score.tempo > 0
    parsed = music21.converter.parse(score.musicxml)
    assert len(parsed.recurse().notes) > 20
    assert score.midi[:4] == b"MThd"
    notes = score.notes
    assert list(notes.columns) == ["stem", "pitch", "start_s", "end_s", "velocity", "amplitude"]
    assert len(notes) == score.result["n_notes"] and set(notes["stem"]) == {"mix"}
    assert onset_f1(chorale, notes) > 0.7  # the notes are the chorale's, not just any notes
    assert score.stems == {}  # transcribed without separation

    folder = job.download(tmp_path / "download")
    assert (folder / "score.musicxml").read_text() == score.musicxml
    assert (folder / "score.mid").read_bytes() == score.midi
    assert (folder / "notes.csv").is_file() and (folder / "result.json").is_file()


def test_score_shows_every_page(finished):
    score = finished[0].result(progress=False)
    pages = score.pages
    assert pages and all(p.lstrip().startswith(("<svg", "<?xml")) for p in pages)
    assert sum(p.count('class="note"') for p in pages) > 20
    assert score.svg(1) == pages[0]
    assert score.pdf[:4] == b"%PDF"
    html = score._repr_html_()
    assert html.count("<svg") >= len(pages) and score.key in html


def test_stems_of_a_separated_job(client, chorale_url):
    score = client.submit(chorale_url, stems=["other", "bass"]).result(timeout=180, progress=False)
    assert set(score.stems) == {"bass", "drums", "other", "vocals"}
    audio, rate = soundfile.read(io.BytesIO(score.stems["bass"]))
    assert rate == 44100 and audio.shape[1] == 2 and abs(len(audio) / rate - score.result["duration_s"]) < 0.1
    assert set(score.notes["stem"]) <= {"other", "bass"}


def test_failed_jobs_raise_job_failed_with_stage_and_retryable(client, http_server):
    with pytest.raises(JobFailed) as permanent:
        client.submit(http_server.url("status/404/gone.mp3"), **FAST).wait(timeout=60, progress=False)
    assert (permanent.value.stage, permanent.value.retryable) == ("download", False)
    assert "404" in permanent.value.message

    with pytest.raises(JobFailed) as transient:  # 503 every time: retried with backoff, then failed
        client.submit(http_server.url("status/503/busy.mp3"), **FAST).wait(timeout=90, progress=False)
    assert (transient.value.stage, transient.value.retryable) == ("download", True)


def test_refused_requests_and_unknown_jobs_raise_service_errors(client):
    with pytest.raises(ServiceError) as refused:
        client.submit("ftp://example.org/song.mp3")
    assert refused.value.status_code == 400 and "ftp" in refused.value.message
    with pytest.raises(JobNotFound):
        client.get("no-such-job")
    with pytest.raises(ServiceError):
        client.jobs(status="bogus")


def test_jobs_listing_and_submit_many(client, finished, http_server, chorale_encoded, media_dir):
    job, _ = finished
    assert job.id in [j["job_id"] for j in client.jobs(status="completed")]
    urls = [http_server.url(chorale_encoded[fmt].relative_to(media_dir)) for fmt in ("flac", "ogg")]
    jobs = client.submit_many(urls, **FAST)
    assert len({j.id for j in jobs}) == 2
    assert all(j.wait(timeout=180, progress=False)["status"] == "completed" for j in jobs)


def test_async_client_matches_the_sync_one(base_url, finished, chorale_url):
    sync_job, _ = finished
    sync_score = sync_job.result(progress=False)

    async def main():
        async with AsyncClient(base_url) as aclient:
            job = await aclient.submit(chorale_url, **FAST)  # the same request: deduplicated
            assert job.deduplicated and job.id == sync_job.id
            status = await job.status()
            score = await job.result(progress=False)
            listed = await aclient.jobs(status="completed")
            return status, score, listed

    status, score, listed = asyncio.run(main())
    assert status == sync_job.status()
    assert score.musicxml == sync_score.musicxml and score.midi == sync_score.midi
    assert score.notes.equals(sync_score.notes)
    assert sync_job.id in [j["job_id"] for j in listed]


def test_async_failures_raise_the_same_errors(base_url, http_server):
    async def main():
        async with AsyncClient(base_url) as aclient:
            job = await aclient.submit(http_server.url("status/404/async-gone.mp3"), **FAST)
            await job.wait(timeout=60, progress=False)

    with pytest.raises(JobFailed) as caught:
        asyncio.run(main())
    assert caught.value.retryable is False and caught.value.stage == "download"


def run_cli(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "rescored_ray.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cli_submit_status_download(base_url, http_server, chorale_encoded, media_dir, tmp_path):
    url = http_server.url(chorale_encoded["m4a"].relative_to(media_dir))
    submitted = run_cli("submit", url, "--priority", "high", "--stems", "mix", "--wait", "--service", base_url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0].strip()
    status = run_cli("status", job_id, "--service", base_url)
    assert status.returncode == 0 and '"status": "completed"' in status.stdout and '"priority": "high"' in status.stdout
    downloaded = run_cli("download", job_id, "-o", str(tmp_path / "dl"), "--service", base_url)
    assert downloaded.returncode == 0, downloaded.stderr
    assert len(list(music21.converter.parse(tmp_path / "dl" / "score.musicxml").recurse().notes)) > 20

    failed = run_cli("submit", http_server.url("status/404/cli-gone.mp3"), "--wait", "--service", base_url)
    assert failed.returncode == 2 and failed.stderr.strip().startswith("error (download, permanent)")


def test_transcribe_in_process_and_on_ray(chorale_encoded, chorale, ray_cluster, tmp_path):
    here = rescored_ray.transcribe(
        str(chorale_encoded["flac"]), tmp_path / "here", use_ray=False, progress=False, separation="none", stems=["mix"]
    )
    assert onset_f1(chorale, here.notes) > 0.7
    assert (tmp_path / "here" / "score.musicxml").is_file()
    on_ray = rescored_ray.transcribe(str(chorale_encoded["flac"]), separation="none", stems=["mix"])
    assert on_ray.notes.equals(here.notes) and on_ray.key == here.key and on_ray.midi[:4] == b"MThd"
    with pytest.raises(TypeError):
        rescored_ray.transcribe(str(chorale_encoded["flac"]), colour="blue")


def test_batch_through_the_ray_jobs_api(ray_head, client, rss_feed_info, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head.token_file))
    config = tmp_path / "batch.yaml"
    config.write_text(
        "batch: {transcriber: {num_cpus: 1}, download: {num_cpus: 0.5}, notation: {num_cpus: 0.5}}\n"
        "pipeline: {separation: {model: none}, write_preview: false}\n"
    )
    run = client.batch([rss_feed_info.url], str(tmp_path / "out"), config=str(config), ray_address=ray_head.address)
    assert run.wait(timeout=300) == "SUCCEEDED"
    good = len(rss_feed_info.good_items)
    assert f"{good} completed, 1 failed, 0 skipped" in run.summary()
    figures = run.progress()  # the run's progress lines, read back from its job logs (issue 17)
    assert figures is not None and figures.done == figures.total == good + 1 and figures.failed == 1
    manifest = run.manifest()
    assert sorted(manifest["status"]) == sorted(["completed"] * good + ["failed"])
    assert np.all(manifest.loc[manifest["status"] == "completed", "n_notes"] > 0)
