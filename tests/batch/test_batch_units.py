"""Batch building blocks without a cluster: input expansion, the manifest, retries, config."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rescored_ray.batch.config import BatchConfig
from rescored_ray.batch.inputs import expand_inputs, safe_id
from rescored_ray.batch.manifest import COMPLETED, FAILED, MANIFEST, PARTS, SKIPPED, Manifest
from rescored_ray.batch.plan import plan_batch
from rescored_ray.errors import NonRetryableError, RetryableError
from rescored_ray.retry import backoff_delay, call_with_retries
from rescored_ray.settings import load_settings
from rescored_ray.storage import ResultStore

ROOT = Path(__file__).resolve().parents[2]


# -- inputs -------------------------------------------------------------------------------------


def test_safe_id_is_a_folder_name_and_keeps_distinct_ids_apart():
    assert safe_id("dQw4w9WgXcQ", "x") == "dQw4w9WgXcQ"
    a, b = safe_id("a/b", "1"), safe_id("a?b", "2")
    assert a != b and all(c.isalnum() or c in "._-" for c in a + b)
    assert safe_id("..", "fallback") not in ("", ".", "..")
    assert len(safe_id("x" * 500, "y")) <= 80


def test_rss_feed_expands_to_one_entry_per_item(rss_feed_info):
    entries, failures = expand_inputs([rss_feed_info.url])
    assert not failures
    assert [e.url for e in entries] == [item.url for item in rss_feed_info.items]
    assert [e.title for e in entries] == [item.title for item in rss_feed_info.items]
    assert len({e.id for e in entries}) == len(entries)
    assert [e.index for e in entries] == list(range(len(entries)))


def test_url_files_folders_and_duplicates(tmp_path, chorale_encoded, http_server, media_dir):
    mp3_url = http_server.url(chorale_encoded["mp3"].relative_to(media_dir))
    flac_url = http_server.url(chorale_encoded["flac"].relative_to(media_dir))
    text = tmp_path / "urls.txt"
    text.write_text(f"# comment\n\n{mp3_url}\n{mp3_url}\n")
    table = tmp_path / "urls.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["url", "id", "title"])
        writer.writeheader()
        writer.writerow({"url": flac_url, "id": "my id/1", "title": "FLAC take"})
    parquet = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["https://www.youtube.com/watch?v=dQw4w9WgXcQ"]}), parquet)
    folder = tmp_path / "music"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "song one.mp3").write_bytes(chorale_encoded["mp3"].read_bytes())
    (folder / "notes.txt").write_text("not audio, not listed")

    entries, failures = expand_inputs([str(text), str(table), str(parquet), str(folder)])
    assert not failures
    assert [e.url for e in entries] == [
        mp3_url,
        flac_url,
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        str((folder / "sub" / "song one.mp3").resolve()),
    ]
    assert entries[1].title == "FLAC take" and entries[1].id.startswith("my_id_1")
    assert entries[2].id == "dQw4w9WgXcQ"
    assert entries[3].id.startswith("sub_song_one")
    assert [e.input for e in entries] == [str(text), str(table), str(parquet), str(folder)]


def _big_feed(folder: Path, server, n: int) -> tuple[str, Path]:
    """A feed and a URL list of ``n`` entries whose audio does not exist: listing must not fetch it."""
    from tests.media import FeedItem, write_rss_feed

    urls = [server.url(f"clips/clip-{i:05d}.flac") for i in range(n)]
    items = [FeedItem(f"Clip {i}", url, "audio/flac", 1000, 3.0, f"clip-{i:05d}") for i, url in enumerate(urls)]
    write_rss_feed(folder / "feed.xml", items)
    (folder / "urls.txt").write_text("\n".join(urls) + "\n")
    return server.url("feed.xml"), folder / "urls.txt"


def test_large_inputs_are_listed_without_fetching_an_entry(tmp_path, caplog):
    """Issue 17: a long feed is one request and small records; a 10,000-line URL file is none.
    (The 10,000-entry feed is measured by ``bench/batch_scale.py --list-only``: yt-dlp takes
    seconds per thousand items.)"""
    import tracemalloc

    from tests.media import MediaServer

    with MediaServer(tmp_path) as server:
        feed, _ = _big_feed(tmp_path, server, 1000)
        with caplog.at_level("WARNING", logger="rescored_ray.batch.inputs"):
            entries, failures = expand_inputs([feed], max_playlist_entries=1000)  # exactly the cap: all there
        assert "listing stopped" not in caplog.text
        assert not failures and len(entries) == 1000 and len({e.id for e in entries}) == 1000
        assert [r.path for r in server.requests] == ["/feed.xml"]

        with caplog.at_level("WARNING", logger="rescored_ray.batch.inputs"):
            capped, _ = expand_inputs([feed], max_playlist_entries=400)
        assert len(capped) == 400 and "listing stopped at 400 entries" in caplog.text

        server.requests.clear()
        _, url_list = _big_feed(tmp_path, server, 10_000)
        tracemalloc.start()
        try:
            entries, failures = expand_inputs([str(url_list)], max_playlist_entries=5000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert not failures and len(entries) == 10_000  # a URL file is not a playlist: no cap
        assert server.requests == []
        assert peak < 16 * 2**20, f"listing 10,000 URLs peaked at {peak / 2**20:.1f} MiB"


def test_unreadable_inputs_are_reported_not_fatal(tmp_path, http_server):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("link\nhttp://example.invalid/a.mp3\n")
    entries, failures = expand_inputs([str(bad_csv), http_server.url("status/404/feed.xml")])
    assert entries == []
    assert [f.input for f in failures] == [str(bad_csv), http_server.url("status/404/feed.xml")]
    assert "no 'url' column" in str(failures[0].error) and failures[0].error.retryable is False
    assert failures[1].error.retryable is False  # a 404 playlist stays gone


# -- manifest -----------------------------------------------------------------------------------


def _row(entry_id: str, status: str, **extra) -> dict:
    return {"id": entry_id, "url": f"https://example.org/{entry_id}.mp3", "status": status, "index": 0, **extra}


def test_manifest_parts_survive_a_crash_and_fold_into_one_file(tmp_path):
    store = ResultStore(str(tmp_path))
    first = Manifest(store, "run-1")
    first.append([_row("a", COMPLETED, n_notes=10), _row("b", FAILED, error="HTTP Error 503", retryable=True)])
    first.append([_row("c", COMPLETED, n_notes=3)])
    # the run dies here: no consolidate; the next run still sees everything
    assert len(store.list_files(PARTS)) == 2
    second = Manifest(store, "run-2")
    rows = second.load()
    assert {k: v["status"] for k, v in rows.items()} == {"a": COMPLETED, "b": FAILED, "c": COMPLETED}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "score.musicxml").write_text("<score-partwise/>")
    assert set(second.done(rows)) == {"a"}  # c's folder is gone, so c is not done

    second.append([_row("b", COMPLETED, n_notes=7), _row("a", SKIPPED, n_notes=10)])
    table = second.consolidate()
    assert store.list_files(PARTS) == [] and store.exists(MANIFEST)
    final = {row["id"]: row for row in pq.read_table(tmp_path / MANIFEST).to_pylist()}
    assert table.num_rows == 3
    assert (final["a"]["status"], final["b"]["status"], final["b"]["n_notes"]) == (SKIPPED, COMPLETED, 7)


def test_manifest_ignores_a_part_cut_short(tmp_path):
    store = ResultStore(str(tmp_path))
    Manifest(store, "run-1").append([_row("a", COMPLETED)])
    store.put_bytes(b"PAR1 truncated", f"{PARTS}/run-1-00002.parquet")
    assert set(Manifest(store, "run-2").load()) == {"a"}


# -- retries and config -------------------------------------------------------------------------


def test_backoff_doubles_and_caps():
    assert [backoff_delay(n, 2.0, 10.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 10.0]


def test_transient_errors_retry_with_backoff_permanent_ones_never():
    waits: list[float] = []
    calls = iter([RetryableError("503", stage="download"), RetryableError("503", stage="download"), "ok"])

    def flaky():
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert call_with_retries(flaky, max_retries=3, base_s=1.0, max_s=60.0, sleep=waits.append) == ("ok", 3)
    assert waits == [1.0, 2.0]

    def private():
        raise NonRetryableError("private video", stage="download")

    waits.clear()
    with pytest.raises(NonRetryableError) as caught:
        call_with_retries(private, max_retries=3, base_s=1.0, max_s=60.0, sleep=waits.append)
    assert waits == [] and caught.value.attempts == 1

    def always_busy():
        raise RetryableError("busy", stage="download")

    with pytest.raises(RetryableError) as caught:
        call_with_retries(always_busy, max_retries=2, base_s=0.5, max_s=60.0, sleep=waits.append)
    assert caught.value.attempts == 3 and waits == [0.5, 1.0]


def test_batch_yaml_is_valid_and_gpu_shares_default_sensibly():
    config = load_settings(ROOT / "configs" / "batch.yaml", env={})
    assert config.pipeline.separation.model == "htdemucs"
    assert config.batch.separator.gpus("separator", gpus_available=True) == 0.5
    assert config.batch.transcriber.gpus("transcriber", gpus_available=True) == 0.25
    assert config.batch.separator.gpus("separator", gpus_available=False) == 0.0
    assert plan_batch(config, [{"CPU": 2}]).reserved_cpus() <= 2  # the shipped file plans a 2-core machine
    no_separation = load_settings(ROOT / "configs" / "batch.yaml", env={"RESCORED_PIPELINE__SEPARATION__MODEL": "none"})
    assert no_separation.pipeline.separation.enabled is False
    assert plan_batch(no_separation, [{"CPU": 2}]).separator is None
    with pytest.raises(ValueError):
        BatchConfig.model_validate({"separator": {"num_gpus": 0.5, "typo": 1}})
