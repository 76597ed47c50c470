"""Batch transcription with real Ray Data: an RSS playlist served on loopback, a URL list,
failure isolation, transient retries, resume, and fractional-GPU placement."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import music21
import pyarrow.parquet as pq
import pytest

from rescored_ray.batch import run_batch
from rescored_ray.batch.manifest import COMPLETED, FAILED, MANIFEST, SKIPPED
from rescored_ray.pipeline import Pipeline
from rescored_ray.precision import resolve_precision
from rescored_ray.separation import ModelLoadError
from rescored_ray.settings import load_settings, merge
from tests.metrics_scrape import deltas_when_settled, scrape

pytestmark = pytest.mark.slow

GPU_SHARES = {"SeparateStems": 0.5, "TranscribeStems": 0.25}


def _config(tmp: Path, pipeline=None, **batch):
    """One Demucs actor at 0.5 GPU and two Basic Pitch actors at 0.25: exactly one GPU."""
    base = {
        "download": {"num_cpus": 0.5, "concurrency": 2},
        "separator": {"num_gpus": 0.5, "num_cpus": 1, "min_actors": 1, "max_actors": 1, "batch_size": 1},
        "transcriber": {"num_gpus": 0.25, "num_cpus": 0.5, "min_actors": 2, "max_actors": 2, "batch_size": 2},
        "notation": {"num_cpus": 0.5, "concurrency": 2},
        "max_retries": 3,
        "backoff_base_s": 0.2,
        "manifest_flush_rows": 2,
    }
    base_pipeline = {
        "source": {"temp_dir": str(tmp / "tmp")},
        "separation": {"model": "demucs_unittest"},
        "transcription": {"stems": ["other", "bass", "vocals"]},
    }
    return load_settings(
        overrides={"batch": merge(base, batch), "pipeline": merge(base_pipeline, pipeline or {})}, env={}
    )


class ActorWatcher(threading.Thread):
    """Polls Ray's state API while a run goes on: which stage actors are alive, where, with what."""

    def __init__(self):
        import ray

        super().__init__(daemon=True)
        self.address = ray.get_runtime_context().gcs_address  # other Ray instances may run on this machine
        self.snapshots: list[list[dict]] = []
        self.stop = threading.Event()

    def run(self):
        from ray.util.state import list_actors

        while not self.stop.is_set():
            alive = list_actors(
                address=self.address, detail=True, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False
            )
            stage_actors = []
            for actor in alive:
                name = next((stage for stage in GPU_SHARES if stage in (actor.class_name or "")), None)
                if name:
                    stage_actors.append(
                        {
                            "stage": name,
                            "node": actor.node_id,
                            "pid": actor.pid,
                            "resources": dict(actor.required_resources or {}),
                        }
                    )
            if stage_actors:
                self.snapshots.append(stage_actors)
            self.stop.wait(0.3)


@pytest.fixture(scope="module")
def flaky_url(http_server, rss_feed_info, media_dir):
    """A copy of a feed file only this module asks for, served 503 twice before it works."""
    first = rss_feed_info.good_items[0]
    relative = first.url.split(http_server.base_url + "/", 1)[1]
    target = media_dir / "batch" / f"flaky-{Path(relative).name}"
    target.parent.mkdir(exist_ok=True)
    shutil.copy(media_dir / relative, target)
    return http_server.url(f"flaky/2/batch/{target.name}")


@pytest.fixture(scope="module")
def first_run(ray_cluster, rss_feed_info, flaky_url, tmp_path_factory):
    """The feed (4 good + 1 missing) plus a URL list (the flaky copy, and a duplicate of a feed entry)."""
    tmp = tmp_path_factory.mktemp("batch")
    url_list = tmp / "urls.txt"
    url_list.write_text(f"# extra entries\n{flaky_url}\n{rss_feed_info.good_items[1].url}\n")
    output = tmp / "out"
    config = _config(tmp)
    watcher = ActorWatcher()
    watcher.start()
    metrics_before = scrape()
    try:
        summary = run_batch([rss_feed_info.url, str(url_list)], str(output), config, progress_bars=False)
    finally:
        watcher.stop.set()
        watcher.join(10)
    table = pq.read_table(output / MANIFEST)
    return {
        "summary": summary,
        "rows": table.to_pylist(),
        "output": output,
        "config": config,
        "tmp": tmp,
        "watcher": watcher,
        "url_list": url_list,
        "metrics_before": metrics_before,
    }


def test_batch_metrics_reach_the_metrics_agent(first_run):
    """Entries by outcome (driver), stage durations (the stage workers), audio processed."""
    completed = [row for row in first_run["rows"] if row["status"] == COMPLETED]
    expected = {
        ("rescored_batch_entries_total", (("status", "completed"),)): 5,
        ("rescored_batch_entries_total", (("status", "failed"), ("stage", "download"))): 1,
        ("rescored_stage_seconds_count", (("stage", "separation"), ("path", "batch"), ("ok", "true"))): 5,
        ("rescored_stage_seconds_count", (("stage", "transcription"), ("path", "batch"), ("ok", "true"))): 5,
        ("rescored_stage_seconds_count", (("stage", "notation"), ("path", "batch"), ("ok", "true"))): 5,
        # the 404 entry once (permanent), the flaky copy twice (two 503s, then it works)
        ("rescored_stage_seconds_count", (("stage", "download"), ("path", "batch"), ("ok", "false"))): 3,
        # waited for like the counts (one read could land between two exports)
        ("rescored_audio_seconds_total", (("path", "batch"),)): sum(row["duration_s"] for row in completed),
    }
    deltas, _ = deltas_when_settled(first_run["metrics_before"], expected)
    assert deltas == pytest.approx(expected, abs=0.01)
    # (model load times are gauges of the stage actors: they leave the agent with the actors at
    # the end of the run, so they are checked on the service's live replicas in test_monitoring)


def test_manifest_has_every_entry_with_the_right_status(first_run, rss_feed_info, flaky_url):
    rows = {row["url"]: row for row in first_run["rows"]}
    expected_urls = {item.url for item in rss_feed_info.items} | {flaky_url}
    assert set(rows) == expected_urls  # the duplicate in urls.txt is one entry, not two
    assert len(first_run["rows"]) == len({row["id"] for row in first_run["rows"]}) == 6

    broken = rows[rss_feed_info.items[rss_feed_info.broken_index].url]
    assert broken["status"] == FAILED
    assert broken["retryable"] is False and broken["stage"] == "download"
    assert "404" in broken["error"] or "not found" in broken["error"].lower()
    assert broken["musicxml"] is None

    items = rss_feed_info.good_items
    good = [rows[item.url] for item in items] + [rows[flaky_url]]
    assert all(row["status"] == COMPLETED for row in good), [(r["id"], r["error"]) for r in good]
    for row, item in zip(good, [*items, items[0]], strict=False):
        assert row["duration_s"] == pytest.approx(item.duration_s, abs=0.1)
        assert row["error"] is None and row["n_notes"] > 0 and row["key"] and row["tempo_bpm"] > 0
        assert row["separation_model"] == "demucs_unittest"
        assert row["separation_precision"] == resolve_precision("auto", "cpu")  # what auto chose on this CPU
        assert row["stems"] == ["bass", "drums", "other", "vocals"]
        assert row["separation_s"] > 0 and row["transcription_s"] > 0 and row["notation_s"] > 0
        assert len(row["stem_files"]) == 4 and all(Path(p).is_file() for p in row["stem_files"])

    summary = first_run["summary"]
    assert (summary.completed, summary.failed, summary.skipped) == (5, 1, 0)
    assert summary.audio_s == pytest.approx(sum(row["duration_s"] for row in good), rel=1e-6)
    assert "5 completed, 1 failed, 0 skipped" in summary.line() and "songs/hour" in summary.line()
    assert not list((first_run["output"] / "_manifest" / "parts").glob("*.parquet"))  # folded into the manifest


def test_result_json_has_the_whole_timeline_of_an_entry(first_run):
    """Each stage ran in another worker; result.json still gets all of them, in order, with the
    separation's precision, as a CLI or service run would."""
    for row in first_run["rows"]:
        if row["status"] != COMPLETED:
            continue
        result = json.loads(Path(row["result"]).read_text())
        stages = [span["stage"] for span in result["timeline"] if span["ok"]]
        assert stages == ["download", "decode", "separation", "transcription", "notation", "outputs"]
        separation = next(span for span in result["timeline"] if span["stage"] == "separation")
        assert separation["workers"][0]["precision"] == result["separation_precision"] == row["separation_precision"]
        assert (
            separation["workers"][0]["pid"]
            != next(span for span in result["timeline"] if span["stage"] == "notation")["workers"][0]["pid"]
        )
        assert result["timings"]["separation"] == pytest.approx(row["separation_s"], abs=1e-3)


def test_completed_scores_load_in_music21(first_run):
    for row in first_run["rows"]:
        if row["status"] != COMPLETED:
            continue
        score = music21.converter.parse(row["musicxml"])
        n_notes = sum(len(element.pitches) for element in score.recurse().notes)
        assert n_notes > 0, row["id"]
        assert Path(row["midi"]).stat().st_size > 0 and Path(row["preview"]).read_text().startswith("<")
        assert Path(row["musicxml"]).parent.name == row["id"]


def test_transient_errors_are_retried_with_backoff(first_run, flaky_url, http_server):
    row = next(r for r in first_run["rows"] if r["url"] == flaky_url)
    assert row["status"] == COMPLETED
    assert row["attempts"] >= 2
    flaky_path = flaky_url.split(http_server.base_url, 1)[1]
    statuses = [r.status for r in http_server.requests if r.path == flaky_path]
    assert statuses.count(503) == 2 and statuses[-1] in (200, 206)


def test_batch_scores_equal_the_single_song_pipeline(first_run, rss_feed_info, tmp_path):
    """Same stage code: a batch entry's result is what Pipeline.run makes of the same source."""
    item = rss_feed_info.good_items[0]
    row = next(r for r in first_run["rows"] if r["url"] == item.url)
    single = Pipeline(first_run["config"].pipeline).run(item.url, tmp_path / "single")
    assert (row["n_notes"], row["key"], row["tempo_bpm"]) == (single.n_notes, single.key, single.tempo_bpm)
    batch_xml = music21.converter.parse(row["musicxml"])
    single_xml = music21.converter.parse(single.path("musicxml"))
    pitches = lambda score: [p.midi for n in score.recurse().notes for p in n.pitches]  # noqa: E731
    assert pitches(batch_xml) == pitches(single_xml)


def test_separator_and_transcribers_share_one_gpu(first_run, ray_cluster):
    assert ray_cluster.cluster_resources().get("GPU") == 1
    snapshots = first_run["watcher"].snapshots
    assert snapshots, "the state API never showed a stage actor"
    full = [
        snap
        for snap in snapshots
        if sorted(actor["stage"] for actor in snap) == ["SeparateStems", "TranscribeStems", "TranscribeStems"]
    ]
    assert full, f"never saw 1 separator + 2 transcribers alive together: {snapshots[-1]}"
    snap = full[-1]
    for actor in snap:
        assert actor["resources"].get("GPU") == GPU_SHARES[actor["stage"]]
    assert sum(actor["resources"]["GPU"] for actor in snap) == pytest.approx(1.0)
    assert len({actor["node"] for actor in snap}) == 1
    # and inside the actors, Ray handed every one of them GPU 0 of that node
    completed = [r for r in first_run["rows"] if r["status"] == COMPLETED]
    assert all("gpu=0" in r["separation_worker"] and "gpu=0" in r["transcription_worker"] for r in completed)


def test_resume_runs_only_the_missing_entries(first_run, rss_feed_info, flaky_url):
    output = first_run["output"]
    rows = {row["url"]: row for row in first_run["rows"]}
    lost = rows[rss_feed_info.good_items[2].url]
    shutil.rmtree(output / lost["id"])  # as if the run had died before this entry was written
    kept = [rows[item.url] for item in rss_feed_info.good_items if item.url != lost["url"]] + [rows[flaky_url]]
    kept_mtimes = {row["id"]: Path(row["musicxml"]).stat().st_mtime_ns for row in kept}

    summary = run_batch(
        [rss_feed_info.url, str(first_run["url_list"])], str(output), first_run["config"], progress_bars=False
    )
    again = {row["url"]: row for row in pq.read_table(output / MANIFEST).to_pylist()}
    assert (summary.completed, summary.skipped, summary.failed) == (1, 4, 1)
    assert again[lost["url"]]["status"] == COMPLETED and again[lost["url"]]["run_id"] == summary.run_id
    assert Path(again[lost["url"]]["musicxml"]).is_file()
    for row in kept:
        assert again[row["url"]]["status"] == SKIPPED
        assert again[row["url"]]["n_notes"] == row["n_notes"]  # the earlier results stay on record
        assert Path(row["musicxml"]).stat().st_mtime_ns == kept_mtimes[row["id"]]  # not rewritten
    assert again[rss_feed_info.items[rss_feed_info.broken_index].url]["status"] == FAILED


def test_a_model_that_cannot_load_stops_the_run_with_its_own_error(ray_cluster, rss_feed_info, tmp_path):
    """Not 5 failed rows and not Ray's traceback: the loader's message, as a permanent error."""
    empty_repo = tmp_path / "no-weights"
    empty_repo.mkdir()
    config = _config(tmp_path, pipeline={"separation": {"model": "htdemucs", "repo": str(empty_repo)}})
    with pytest.raises(ModelLoadError) as caught:
        run_batch([rss_feed_info.url], str(tmp_path / "out"), config, progress_bars=False)
    assert caught.value.retryable is False and caught.value.stage == "separation"
    assert str(empty_repo) in str(caught.value)
