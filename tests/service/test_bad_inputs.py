"""The bad-input corpus, through the HTTP API of a real Serve app.

Every case gets a 4xx with an ``error`` field, or a job that fails with a clear message,
the right stage and the right ``retryable`` (or, for odd but valid audio, completes).
Never a 5xx. Afterwards a good job still completes, and no temp files are left behind.
The table is the contract; its counts go into the closing note of the hardening issue.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from rescored_ray.errors import SERVICE_ERRORS
from tests.media import write_wav
from tests.service_app import deploy, wait_for_job

FAST = {"separation": "none", "stems": ["mix"]}

# -- requests refused at the door: (name, method, path, body or raw bytes, status, words in the error)
REFUSED = [
    ("malformed JSON", "POST", "/api/v1/transcribe", b'{"url": ', 400, "invalid request"),
    ("JSON array body", "POST", "/api/v1/transcribe", b'["http://example.com/a.mp3"]', 400, "invalid request"),
    ("JSON string body", "POST", "/api/v1/transcribe", b'"http://example.com/a.mp3"', 400, "invalid request"),
    ("empty body", "POST", "/api/v1/transcribe", b"", 400, "invalid request"),
    ("url is a number", "POST", "/api/v1/transcribe", {"url": 42}, 400, "url"),
    ("url is null", "POST", "/api/v1/transcribe", {"url": None}, 400, "url is required"),
    ("no url at all", "POST", "/api/v1/transcribe", {"priority": "high"}, 400, "url is required"),
    (
        "priority unknown",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "priority": "urgent"},
        400,
        "priority",
    ),
    (
        "priority wrong type",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "priority": 1},
        400,
        "priority",
    ),
    (
        "unknown field",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "colour": "blue"},
        400,
        "colour",
    ),
    (
        "unknown option",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "options": {"speed": 2}},
        400,
        "speed",
    ),
    (
        "options is a list",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "options": []},
        400,
        "options",
    ),
    (
        "stems is a string",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "options": {"stems": "bass"}},
        400,
        "stems",
    ),
    (
        "too many stems",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "options": {"stems": ["a"] * 9}},
        400,
        "stems",
    ),
    (
        "stem name escapes",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "options": {"stems": ["../etc"]}},
        400,
        "invalid stem",
    ),
    (
        "tempo negative",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "options": {"tempo_override": -5}},
        400,
        "tempo_override",
    ),
    (
        "tempo absurd",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "options": {"tempo_override": 1000}},
        400,
        "tempo_override",
    ),
    (
        "key nonsense",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "options": {"key_override": "H# flat major"}},
        400,
        "key",
    ),
    (
        "model not deployed",
        "POST",
        "/api/v1/transcribe",
        {"url": "http://example.com/a.mp3", "options": {"separation": "htdemucs_ft"}},
        400,
        "not deployed",
    ),
    ("empty url", "POST", "/api/v1/transcribe", {"url": ""}, 400, "url"),
    ("whitespace url", "POST", "/api/v1/transcribe", {"url": "   "}, 400, ""),
    ("overlong url", "POST", "/api/v1/transcribe", {"url": "http://example.com/" + "a" * 4100}, 400, "url"),
    ("unicode garbage url", "POST", "/api/v1/transcribe", {"url": "ħŧŧþ://üñî©ødé/♫"}, 400, ""),
    ("no scheme", "POST", "/api/v1/transcribe", {"url": "example.com/a.mp3"}, 400, ""),
    ("javascript url", "POST", "/api/v1/transcribe", {"url": "javascript:alert(1)"}, 400, ""),
    ("file url", "POST", "/api/v1/transcribe", {"url": "file:///etc/passwd"}, 400, ""),
    ("local path", "POST", "/api/v1/transcribe", {"url": "/etc/passwd"}, 400, ""),
    ("huge body", "POST", "/api/v1/transcribe", {"url": "http://example.com/a.mp3", "pad": "x" * 20_000}, 413, "bytes"),
    (
        "youtube playlist",
        "POST",
        "/api/v1/transcribe",
        {"url": "https://www.youtube.com/playlist?list=PLx0sYbCqOb8TBPRdmBHs5Iftvv9TPboYG"},
        400,
        "playlist",
    ),
    ("youtube id too short", "POST", "/api/v1/transcribe", {"url": "https://www.youtube.com/watch?v=short"}, 400, ""),
    ("unknown job", "GET", "/api/v1/jobs/0123456789abcdef0123456789abcdef", None, 404, "not found"),
    ("cancel unknown job", "DELETE", "/api/v1/jobs/0123456789abcdef0123456789abcdef", None, 404, "not found"),
    ("score of unknown job", "GET", "/api/v1/scores/0123456789abcdef0123456789abcdef", None, 404, "not found"),
    (
        "stem path escape",
        "GET",
        "/api/v1/scores/0123456789abcdef0123456789abcdef/stems/..%2F..%2Fledger",
        None,
        404,
        "not found",
    ),
    (
        "stem name not allowed",
        "GET",
        "/api/v1/scores/0123456789abcdef0123456789abcdef/stems/Bass.flac",
        None,
        400,
        "stem",
    ),
    ("unknown route", "GET", "/api/v1/nothing-here", None, 404, "not found"),
    ("wrong method", "PUT", "/api/v1/transcribe", {"url": "http://example.com/a.mp3"}, 405, "not allowed"),
    ("list with bad status", "GET", "/api/v1/jobs?status=exploded", None, 400, "status"),
    ("list with bad limit", "GET", "/api/v1/jobs?limit=many", None, 400, "limit"),
]

# -- accepted, then the job fails: (name, media path or URL, stage, retryable, words in the message)
FAILS = [
    ("404 media", "status/404/gone.mp3", "download", False, "does not exist"),
    ("HTML page without media", "{broken}/page.html", "download", False, "no media"),
    ("non-audio bytes", "{broken}/random.mp3", "decode", False, ""),
    ("truncated mp3", "{broken}/truncated.mp3", "decode", False, "truncated"),
    ("truncated wav", "{broken}/truncated.wav", "decode", False, "truncated"),
    ("zero-length file", "{broken}/empty.mp3", "download", False, "empty"),
    ("over the duration limit", "{broken}/long.mp3", "decode", False, "over the 15.0 min limit"),
    ("playlist to the single-job endpoint", "{feed}", "download", False, "playlist"),
    ("unreachable host", "http://127.0.0.1:9/a.mp3", "download", True, ""),
    ("server keeps failing (503)", "status/503/busy.mp3", "download", True, "503"),
]

# -- odd but valid audio: the job completes
COMPLETES = [
    ("digital silence", "{broken}/silent.wav", 0),
    ("clipped audio", "{clipped}", 20),
    ("8 kHz mono", "{broken}/mono8k.wav", 20),
    ("96 kHz stereo", "{broken}/hires96k.wav", 20),
    ("6 channels (5.1)", "{broken}/surround6.wav", 20),
]


def test_the_corpus_has_at_least_forty_cases():
    assert len(REFUSED) + len(FAILS) + len(COMPLETES) >= 40


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    data_dir = tmp_path_factory.mktemp("bad-input-data")
    deploy(
        data_dir,
        max_retries=1,
        backoff_base_s=0.2,
        pipeline={
            "separation": {"model": "demucs_unittest", "device": "cpu"},
            "write_preview": False,
            "source": {"max_duration_s": 900},
        },
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=60) as client:
        client.data_dir = data_dir
        yield client
    serve.delete("rescored")


@pytest.fixture(scope="module")
def urls(http_server, broken_inputs, media_dir, rss_feed, chorale):
    """Placeholders of the tables, as loopback URLs."""
    from tests.media import read_wav

    samples, rate = read_wav(chorale.path)
    clipped = media_dir / "bad-inputs" / "clipped.wav"
    clipped.parent.mkdir(exist_ok=True)
    write_wav(clipped, np.clip(samples * 8.0, -1.0, 1.0), rate)
    broken_dir = broken_inputs["html"].parent.relative_to(media_dir).as_posix()

    def url(template: str) -> str:
        if template.startswith("http"):
            return template
        if template == "{feed}":
            return rss_feed
        path = template.format(broken=broken_dir, clipped=clipped.relative_to(media_dir).as_posix())
        return http_server.url(path)

    return url


@pytest.mark.parametrize("name,method,path,body,status,words", REFUSED, ids=[case[0] for case in REFUSED])
def test_refused_at_the_door(service, name, method, path, body, status, words):
    if isinstance(body, bytes):
        response = service.request(method, path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = service.request(
            method,
            path,
            content=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    message = error["message"]
    assert isinstance(message, str) and message and words.lower() in message.lower()
    assert SERVICE_ERRORS[error["code"]].status == status  # a stable code for every refusal


@pytest.fixture(scope="module")
def outcomes(service, urls):
    """Submit every job case at once, then wait for all of them."""
    created = {}
    for name, template, *_ in FAILS + COMPLETES:
        response = service.post("/api/v1/transcribe", json={"url": urls(template), "options": FAST})
        assert response.status_code == 201, (name, response.text)
        created[name] = response.json()["job_id"]
    return {name: wait_for_job(service, job_id) for name, job_id in created.items()}


@pytest.mark.parametrize("name,template,stage,retryable,words", FAILS, ids=[case[0] for case in FAILS])
def test_bad_media_fails_with_the_right_stage_and_retryable(outcomes, name, template, stage, retryable, words):
    job = outcomes[name]
    assert job["status"] == "failed", job
    error = job["error"]
    assert (error["stage"], error["retryable"]) == (stage, retryable), error
    assert words.lower() in error["message"].lower(), error["message"]
    assert len(job["attempts"]) == (2 if retryable else 1)  # max_retries=1: transient errors get one retry


@pytest.mark.parametrize("name,template,min_notes", COMPLETES, ids=[case[0] for case in COMPLETES])
def test_odd_but_valid_audio_completes(outcomes, name, template, min_notes):
    job = outcomes[name]
    assert job["status"] == "completed", job["error"]
    assert job["result"]["n_notes"] >= min_notes
    if min_notes == 0:
        assert job["result"]["n_notes"] == 0 and job["result"]["warnings"]


def test_after_the_corpus_a_good_job_completes_and_nothing_is_left_behind(service, outcomes, http_server):
    response = service.post(
        "/api/v1/transcribe",
        json={"url": http_server.url("chorale.flac") + "?after=bad", "options": {"stems": ["other", "bass"]}},
    )
    job = wait_for_job(service, response.json()["job_id"])
    assert job["status"] == "completed" and job["result"]["n_notes"] > 20
    leftovers = list((service.data_dir / "tmp").iterdir())
    assert leftovers == [], leftovers
    assert service.get("/healthz").status_code == 200
