"""Shared fixtures: real rendered audio with exact ground truth, served over loopback HTTP.

Session fixtures (all built once, in parallel threads, under one tmp dir):

- ``media_set`` -> :class:`MediaSet` (everything below, plus build timings)
- ``media_dir`` -> Path of the served directory
- ``chorale`` -> RenderedPiece for ``chorale.wav`` (bach/bwv66.6, piano, 90 bpm, 24.75 s)
- ``chorale_encoded`` -> {"mp3"|"flac"|"ogg"|"opus"|"m4a"|"webm": Path} (``chorale.<ext>``)
- ``band_mix`` -> RenderedPiece for ``mix.wav`` (piano + fingered bass + drums, 100 bpm, 15.75 s)
- ``broken_inputs`` -> dict from :func:`tests.media.make_broken_inputs` (files in media_dir)
- ``http_server`` -> running :class:`tests.media.MediaServer` over media_dir (``.base_url``, ``.url(name)``)
- ``rss_feed_info`` -> :class:`FeedInfo` (feed.xml with 4 rendered chorales + 1 broken item)
- ``rss_feed`` -> the feed's URL (str)
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.media import (
    CONTENT_TYPES,
    FeedItem,
    MediaServer,
    RenderedPiece,
    encode,
    make_broken_inputs,
    read_wav,
    render_band_mix,
    render_chorale,
    write_rss_feed,
    write_wav,
)

CHORALE_CORPUS = "bach/bwv66.6"
CHORALE_TEMPO = 90
ENCODED_FORMATS = ("mp3", "flac", "ogg", "opus", "m4a", "webm")

# (corpus name, output format) for the podcast feed; ~12-15 s each at 100 bpm.
FEED_PIECES = (
    ("bach/bwv66.6", "mp3"),
    ("bach/bwv26.6", "m4a"),
    ("bach/bwv40.8", "opus"),
    ("bach/bwv244.3", "mp3"),
)
FEED_TEMPO = 100
_WORKERS = max(2, min(4, os.cpu_count() or 2))
FEED_MAX_SECONDS = 15.0


@dataclass
class MediaSet:
    dir: Path
    chorale: RenderedPiece
    encoded: dict[str, Path]
    band_mix: RenderedPiece
    broken: dict[str, Path]
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class FeedInfo:
    url: str  # URL of feed.xml on the http_server
    path: Path  # local feed.xml
    items: list[FeedItem]  # in feed order; the broken one has piece=None
    broken_index: int  # index of the item whose enclosure URL returns 404
    build_s: float = 0.0

    @property
    def good_items(self) -> list[FeedItem]:
        return [it for it in self.items if it.piece is not None]


def _timed(timings: dict, key: str, fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    timings[key] = round(time.perf_counter() - t, 3)
    return out


@pytest.fixture(scope="session")
def media_set(tmp_path_factory) -> MediaSet:
    d = tmp_path_factory.mktemp("media")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # fluidsynth runs as a subprocess and PyAV releases the GIL while encoding,
    # so threads overlap the work on multi-core machines.
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        f_chorale = pool.submit(
            _timed,
            timings,
            "render_chorale",
            render_chorale,
            d,
            CHORALE_CORPUS,
            tempo_bpm=CHORALE_TEMPO,
            name="chorale",
        )
        f_mix = pool.submit(_timed, timings, "render_band_mix", render_band_mix, d, CHORALE_CORPUS, name="mix")
        chorale = f_chorale.result()
        f_enc = {
            fmt: pool.submit(_timed, timings, f"encode_{fmt}", encode, chorale.path, fmt) for fmt in ENCODED_FORMATS
        }
        f_broken = pool.submit(
            _timed, timings, "make_broken_inputs", make_broken_inputs, d, chorale, source_mp3=f_enc["mp3"].result()
        )
        encoded = {fmt: f.result() for fmt, f in f_enc.items()}
        band_mix = f_mix.result()
        broken = f_broken.result()
    timings["total"] = round(time.perf_counter() - t0, 3)
    return MediaSet(d, chorale, encoded, band_mix, broken, timings)


@pytest.fixture(scope="session")
def media_dir(media_set) -> Path:
    return media_set.dir


@pytest.fixture(scope="session")
def chorale(media_set) -> RenderedPiece:
    return media_set.chorale


@pytest.fixture(scope="session")
def chorale_encoded(media_set) -> dict[str, Path]:
    return media_set.encoded


@pytest.fixture(scope="session")
def band_mix(media_set) -> RenderedPiece:
    return media_set.band_mix


@pytest.fixture(scope="session")
def long_mix(band_mix, media_dir, http_server) -> str:
    """The band mix twice over (31.5 s), served over HTTP: its separation lasts seconds, so a
    test that reacts to "separation started" still lands inside it on a loaded machine."""
    import numpy as np

    samples, rate = read_wav(band_mix.path)
    path = media_dir / "service" / "long-mix.wav"
    path.parent.mkdir(exist_ok=True)
    write_wav(path, np.tile(samples, (2, 1)), rate)
    return http_server.url(path.relative_to(media_dir).as_posix())


@pytest.fixture(scope="session")
def broken_inputs(media_set) -> dict[str, Path]:
    return media_set.broken


@pytest.fixture(scope="session")
def http_server(media_dir):
    with MediaServer(media_dir) as server:
        yield server


def _feed_piece(out_dir: Path, corpus: str, fmt: str) -> tuple[RenderedPiece, Path]:
    piece = render_chorale(out_dir, corpus, tempo_bpm=FEED_TEMPO, max_seconds=FEED_MAX_SECONDS)
    return piece, encode(piece.path, fmt)


@pytest.fixture(scope="session")
def rss_feed_info(media_dir, http_server) -> FeedInfo:
    t0 = time.perf_counter()
    feed_dir = media_dir / "feed"
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        futures = [pool.submit(_feed_piece, feed_dir, c, fmt) for c, fmt in FEED_PIECES]
        rendered = [f.result() for f in futures]
    items = []
    for (corpus, _), (piece, audio) in zip(FEED_PIECES, rendered, strict=False):
        items.append(
            FeedItem(
                title=f"Chorale {corpus.split('/')[-1].upper()}",
                url=http_server.url(audio.relative_to(media_dir)),
                mime=CONTENT_TYPES[audio.suffix],
                length=audio.stat().st_size,
                duration_s=piece.duration_s,
                guid=f"rescored-test-{piece.name}",
                piece=piece,
            )
        )
    broken_index = 2
    items.insert(
        broken_index,
        FeedItem(
            title="Missing episode",
            url=http_server.url("feed/missing-episode.mp3"),
            mime="audio/mpeg",
            length=123456,
            duration_s=30.0,
            guid="rescored-test-missing",
            piece=None,
        ),
    )
    path = write_rss_feed(media_dir / "feed.xml", items, link=http_server.base_url + "/")
    return FeedInfo(http_server.url("feed.xml"), path, items, broken_index, round(time.perf_counter() - t0, 3))


@pytest.fixture(scope="session")
def rss_feed(rss_feed_info) -> str:
    return rss_feed_info.url


RAY_FIXTURES = {"ray_cluster", "serve_port", "ray_head"}


def pytest_collection_modifyitems(items):
    """Mark every test that uses a Ray cluster ``ray``, so ``make test-fast`` (``-m "not ray"``)
    runs the rest; derived from the fixtures each test asks for, so it cannot drift."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session (start-up costs seconds on 2 cores).

    More logical CPUs than cores, and every actor sets num_cpus, so Serve replicas and
    Ray Data tasks never starve each other of scheduling slots. One logical GPU lets
    fractional-GPU placement be tested on a CPU machine (nothing here asks CUDA for it:
    Serve tests deploy with ``gpus_available=False``). The dashboard is on for Ray's
    state API (which actors hold which resources). Metrics are reported every second
    (Ray's default is 10 s) so the monitoring tests see their series quickly.
    """
    import ray

    ray.init(
        num_cpus=8,
        num_gpus=1,
        include_dashboard=True,
        log_to_driver=False,
        configure_logging=False,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_cluster) -> int:
    """Serve's HTTP proxy, started once: its port cannot change while Serve runs."""
    import socket

    from ray import serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A second, separate Ray cluster (``ray start --head``, token auth on) for Ray Jobs API tests."""
    from tests.ray_head import RayHead

    head = RayHead(tmp_path_factory.mktemp("ray_head"), num_cpus=8)
    head.start()
    yield head
    head.stop()
    assert head.marked_pids() == [], "processes of the test cluster outlived its teardown"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real ``redis-server`` for the session (AOF on, ``appendfsync always``), on a free
    loopback port with its own data folder; tests keep apart by database or key prefix."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), appendfsync="always").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-API server on a free loopback port (tests/s3_server.py), for ``s3://`` results."""
    from tests.s3_server import S3Server

    server = S3Server().start()
    yield server
    server.stop()
