"""A batch run at scale, measured (issue 17): many distinct short clips on loopback, the real
``rescored-ray batch`` driver as a subprocess, sampled while it runs.

Shared by ``bench/batch_scale.py`` (1,000 entries, the JSON figures) and
``tests/batch/test_batch_scale.py`` (150 entries; 60 killed and resumed), so the benchmark and
the CI tests measure the same way. The driver joins a Ray cluster its caller started: the
caller can then read the object store's use, and a SIGKILL of the driver leaves the cluster
(and the evidence on disk) behind for the resumed run.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rescored_ray.batch.manifest import COMPLETED, DONE, FAILED, MANIFEST, PARTS, SKIPPED
from rescored_ray.batch.progress import Figures
from tests.media import FeedItem, MediaServer, read_wav, render_chorale, write_rss_feed

MIB = 1 << 20
CHORALES = ("bach/bwv66.6", "bach/bwv26.6", "bach/bwv40.8", "bach/bwv244.3", "bach/bwv269", "bach/bwv253")
RENDER_SECONDS = 45.0
STEP_S = 0.37
"""Clip starts advance by this much, so no two clips of one render hold the same audio."""
SCORE = "score.musicxml"


# -- inputs ---------------------------------------------------------------------------------------


@dataclass
class Clips:
    """``n`` distinct clips served on loopback, as an RSS feed and as a URL list."""

    folder: Path
    urls: list[str]
    feed_url: str
    url_list: Path
    seconds: float

    def source(self, kind: str) -> str:
        return self.feed_url if kind == "feed" else str(self.url_list)


def make_clips(folder: Path, server: MediaServer, n: int, seconds: float) -> Clips:
    """Render a few chorales (FluidSynth), cut ``n`` distinct excerpts of them as FLAC files.

    Clip ``i`` comes from render ``i % R`` at offset ``(i // R) * STEP_S`` (wrapping), its
    level lowered a little on each wrap, so every entry is a different URL with different audio.
    """
    import soundfile as sf

    renders_dir, clips_dir = folder / "renders", folder / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    count = max(1, min(len(CHORALES), n))
    with ThreadPoolExecutor(max_workers=2) as pool:
        pieces = list(
            pool.map(
                lambda corpus: render_chorale(renders_dir, corpus, tempo_bpm=100, max_seconds=RENDER_SECONDS),
                CHORALES[:count],
            )
        )
    audio = [read_wav(piece.path) for piece in pieces]
    items, urls = [], []
    for index in range(n):
        samples, rate = audio[index % count]
        frames = int(seconds * rate)
        slots = max(1, int((len(samples) - frames) / (STEP_S * rate)))
        wrap, slot = divmod(index // count, slots)
        start = int(slot * STEP_S * rate)
        clip = samples[start : start + frames] * (0.9**wrap)
        name = f"clip-{index:05d}.flac"
        sf.write(clips_dir / name, clip, rate, format="FLAC")
        urls.append(server.url(f"clips/{name}"))
        items.append(
            FeedItem(
                title=f"Clip {index}",
                url=urls[-1],
                mime="audio/flac",
                length=(clips_dir / name).stat().st_size,
                duration_s=seconds,
                guid=f"rescored-scale-{index:05d}",
            )
        )
    write_rss_feed(folder / "feed.xml", items, title=f"{n} clips", link=server.base_url + "/")
    url_list = folder / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    return Clips(folder, urls, server.url("feed.xml"), url_list, seconds)


# -- what is on disk ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One ``completed`` row: an entry's score written and recorded by one run."""

    id: str
    run_id: str
    finished_at: Any


class ManifestWatch:
    """The manifest on disk as it grows: every part file read once (parts never change once
    written), torn parts counted, every completion remembered even after the end-of-run fold
    deletes the parts."""

    def __init__(self, output: Path):
        self.output = output
        self.seen: set[str] = set()
        self.torn: set[str] = set()
        self.completions: set[Completion] = set()
        self.rows_in_parts = 0

    def poll(self) -> None:
        parts = self.output / PARTS
        names = sorted(p.name for p in parts.iterdir()) if parts.is_dir() else []
        for name in names:
            if name in self.seen:
                continue
            if name.endswith(".partial"):
                self.torn.add(name)  # a staging file a killed driver never moved into place
                self.seen.add(name)
                continue
            try:
                rows = pq.read_table(io.BytesIO((parts / name).read_bytes())).to_pylist()
            except FileNotFoundError:
                continue  # folded away meanwhile
            except Exception:
                self.torn.add(name)
                self.seen.add(name)
                continue
            self.seen.add(name)
            self.rows_in_parts += len(rows)
            self._remember(rows)

    def final_rows(self) -> list[dict]:
        """The folded manifest (its completions remembered too)."""
        rows = pq.read_table(self.output / MANIFEST).to_pylist()
        self._remember(rows)
        return rows

    def _remember(self, rows: list[dict]) -> None:
        for row in rows:
            if row["status"] == COMPLETED:
                self.completions.add(Completion(row["id"], row["run_id"], row["finished_at"]))

    def completed_ids(self) -> set[str]:
        return {c.id for c in self.completions}

    def duplicated(self) -> list[str]:
        counts: dict[str, int] = {}
        for completion in self.completions:
            counts[completion.id] = counts.get(completion.id, 0) + 1
        return sorted(entry for entry, count in counts.items() if count > 1)


def count_scores(output: Path) -> int:
    """Entries whose score is on disk (the truest count of finished work)."""
    if not output.exists():
        return 0
    with os.scandir(output) as entries:
        return sum(
            1
            for entry in entries
            if entry.is_dir() and not entry.name.startswith("_") and os.path.exists(os.path.join(entry.path, SCORE))
        )


def object_store_mib(address: str) -> float:
    """Bytes in the cluster's object store now (what ``ray memory --stats-only`` reports)."""
    from ray._private.internal_api import get_memory_info_reply

    reply = get_memory_info_reply(_state(address))
    return float(reply.store_stats.object_store_bytes_used) / MIB


_STATES: dict[str, Any] = {}


def _state(address: str) -> Any:
    from ray._private.internal_api import get_state_from_address

    if address not in _STATES:
        _STATES[address] = get_state_from_address(address)
    return _STATES[address]


# -- one driver process ---------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    rss_mib: float
    store_mib: float
    scores: int
    parts: int


@dataclass
class DriverRun:
    """One ``rescored-ray batch`` process and what was seen while it ran."""

    command: list[str]
    pid: int = 0
    rc: int | None = None
    killed: bool = False
    wall_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    progress: list[tuple[float, Figures]] = field(default_factory=list)
    """The driver's progress lines, stamped when the harness read them."""
    log: str = ""
    first_score_t: float | None = None
    last_score_t: float | None = None

    def rss_at(self, t: float | None) -> float | None:
        if t is None or not self.samples:
            return None
        return min(self.samples, key=lambda s: abs(s.t - t)).rss_mib

    def figures(self) -> dict[str, Any]:
        rss = [s.rss_mib for s in self.samples if s.rss_mib > 0]
        start, end = self.rss_at(self.first_score_t), self.rss_at(self.last_score_t)
        gaps = np.diff([t for t, _ in self.progress]) if len(self.progress) > 1 else np.array([])
        return {
            "rc": self.rc,
            "killed": self.killed,
            "wall_s": round(self.wall_s, 1),
            "driver_rss_start_mib": _round(start),
            "driver_rss_end_mib": _round(end),
            "driver_rss_peak_mib": _round(max(rss) if rss else None),
            "driver_rss_growth_mib": _round(end - start if start is not None and end is not None else None),
            "object_store_peak_mib": _round(max((s.store_mib for s in self.samples), default=None)),
            "progress_lines": len(self.progress),
            "progress_max_gap_s": _round(float(gaps.max()) if gaps.size else None),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def batch_command(source: str, output: Path, config: Path, address: str, progress_every_s: float = 2.0) -> list[str]:
    cli = Path(sys.executable).parent / "rescored-ray"
    return [
        str(cli),
        "batch",
        source,
        "--output",
        str(output),
        "--config",
        str(config),
        "--address",
        address,
        "--progress-every",
        str(progress_every_s),
    ]


def run_driver(
    command: list[str],
    output: Path,
    address: str,
    total: int,
    watch: ManifestWatch,
    *,
    kill_at: float | None = None,
    timeout_s: float = 3600.0,
    sample_s: float = 0.5,
    log_path: Path | None = None,
) -> DriverRun:
    """Run the driver to its end (or SIGKILL it once ``kill_at`` of the entries have a score),
    sampling its RSS, the object store, the scores and the manifest parts on disk."""
    import psutil

    run = DriverRun(command)
    log_path = log_path or output.parent / f"driver-{time.time_ns()}.log"
    started = time.monotonic()
    scores_before = count_scores(output)
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        run.pid = process.pid
        reader = _ProgressReader(log_path, started)
        driver = psutil.Process(process.pid)
        try:
            while process.poll() is None:
                now = time.monotonic() - started
                if now > timeout_s:
                    raise TimeoutError(f"the driver ran past {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
                sample = _sample(driver, output, address, now)
                watch.poll()
                reader.poll()
                run.samples.append(sample)
                if sample.scores > scores_before and run.first_score_t is None:
                    run.first_score_t = now
                if sample.scores >= total and run.last_score_t is None:
                    run.last_score_t = now
                if kill_at is not None and sample.scores >= kill_at * total:
                    os.killpg(process.pid, signal.SIGKILL)
                    run.killed = True
                    process.wait()
                    break
                time.sleep(sample_s)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    run.rc = process.returncode
    run.wall_s = time.monotonic() - started
    if run.last_score_t is None and not run.killed and run.samples:
        run.last_score_t = run.samples[-1].t
    reader.poll()
    run.progress = reader.lines
    run.log = log_path.read_text(errors="replace")
    watch.poll()
    return run


def _sample(driver: Any, output: Path, address: str, now: float) -> Sample:
    try:
        rss = driver.memory_info().rss / MIB
    except Exception:  # the process is exiting
        rss = 0.0
    try:
        store = object_store_mib(address)
    except Exception:
        store = 0.0
    parts = output / PARTS
    return Sample(
        now,
        rss,
        store,
        count_scores(output),
        len(list(parts.iterdir())) if parts.is_dir() else 0,
    )


class _ProgressReader:
    """Progress lines of the driver's log, stamped when they were first seen."""

    def __init__(self, path: Path, started: float):
        self.path = path
        self.started = started
        self.offset = 0
        self.lines: list[tuple[float, Figures]] = []
        self._rest = b""

    def poll(self) -> None:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        self.offset += len(chunk)
        data = self._rest + chunk
        *complete, self._rest = data.split(b"\n")
        now = time.monotonic() - self.started
        for line in complete:
            figures = Figures.parse(line.decode(errors="replace"))
            if figures is not None:
                self.lines.append((now, figures))


def wait_for_dead_driver_job(address: str, pid: int, timeout_s: float = 60.0) -> None:
    """Wait until Ray has ended the killed driver's job (no task of it running, none of its own
    actors alive), so nothing of it writes into the output once the resumed run has started."""
    from ray.util.state import list_actors, list_jobs, list_tasks

    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        jobs = [job for job in list_jobs(address=address) if job.driver_info and job.driver_info.pid == str(pid)]
        if not jobs and time.monotonic() > started + 5:
            return  # killed before it joined the cluster
        if jobs and all(job.status != "RUNNING" for job in jobs):
            live = 0
            for job in jobs:
                by_job = ("job_id", "=", job.job_id)
                actors = list_actors(address=address, filters=[by_job, ("state", "=", "ALIVE")], detail=True)
                live += sum(1 for actor in actors if not actor.is_detached)  # Ray Data's shared helpers stay
                live += len(list_tasks(address=address, filters=[by_job, ("state", "=", "RUNNING")]))
            if not live:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the killed driver's job (pid {pid}) still runs after {timeout_s:.0f} s")


# -- the verdict ----------------------------------------------------------------------------------


def summarise(entries: int, runs: list[DriverRun], watch: ManifestWatch, address: str | None = None) -> dict[str, Any]:
    """The figures of issue 17 for one run, or for a killed run and its resumption."""
    rows = watch.final_rows()
    statuses = [row["status"] for row in rows]
    done = sum(1 for status in statuses if status in DONE)
    wall = sum(run.wall_s for run in runs)
    last = runs[-1].figures()
    every = [run.figures() for run in runs]
    figures: dict[str, Any] = {
        "entries": entries,
        "completed": done,
        "failed": statuses.count(FAILED),
        "duplicated": len(watch.duplicated()),
        "wall_s": round(wall, 1),
        "songs_per_hour": round(done / (wall / 3600.0), 1) if wall > 0 else 0.0,
        "driver_rss_start_mib": last["driver_rss_start_mib"],
        "driver_rss_end_mib": last["driver_rss_end_mib"],
        "driver_rss_peak_mib": max((f["driver_rss_peak_mib"] or 0.0) for f in every),
        "driver_rss_growth_mib": last["driver_rss_growth_mib"],
        "object_store_peak_mib": max((f["object_store_peak_mib"] or 0.0) for f in every),
        "manifest_rows": len(rows),
        "manifest_rows_per_entry_max": max(_counts([row["id"] for row in rows]).values(), default=0),
        "completions": len(watch.completions),
        "torn_parts": len(watch.torn),
        "runs": every,
    }
    figures["_final_statuses"] = {status: statuses.count(status) for status in (COMPLETED, SKIPPED, FAILED)}
    return figures


def _counts(values: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# -- one measured run, or a killed run and its resumption -------------------------------------------


def write_config(
    path: Path,
    *,
    separation: str = "none",
    flush_rows: int = 16,
    object_store_mib: int = 256,
    transcribers: int = 1,
    notation_tasks: int = 2,
    download_tasks: int = 2,
) -> Path:
    """A batch config for a 2-core machine; every stage states its CPUs (a Ray Data map once
    went unscheduled while actors with default CPUs held them all)."""
    import yaml

    config = {
        "batch": {
            "download": {"num_cpus": 0.25, "concurrency": download_tasks},
            # no GPU share even where the cluster lists a (logical) GPU: this measures the framework on CPUs
            "separator": {"num_gpus": 0, "num_cpus": 1, "min_actors": 1, "max_actors": 1, "batch_size": 1},
            "transcriber": {
                "num_gpus": 0,
                "num_cpus": 0.5,
                "min_actors": 1,
                "max_actors": transcribers,
                "batch_size": 4,
            },
            "notation": {"num_cpus": 0.5, "concurrency": notation_tasks},
            "backoff_base_s": 0.2,
            "object_store_memory": object_store_mib * MIB,
            "manifest_flush_rows": flush_rows,
        },
        "pipeline": {"separation": {"model": separation}, "transcription": {"stems": ["other", "bass", "vocals"]}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def measure(
    clips: Clips,
    work: Path,
    address: str,
    config: Path,
    *,
    source: str = "feed",
    kill_at: float | None = None,
    timeout_s: float = 3600.0,
    progress_every_s: float = 2.0,
) -> dict[str, Any]:
    """Run the batch over ``clips`` (and, with ``kill_at``, kill it there and run the same
    command again); the figures of issue 17."""
    import yaml

    output = work / "out"
    shutil.rmtree(output, ignore_errors=True)  # a fresh output: the kill counts this run's scores only
    watch = ManifestWatch(output)
    total = len(clips.urls)
    command = batch_command(clips.source(source), output, config, address, progress_every_s)
    first = run_driver(
        command, output, address, total, watch, kill_at=kill_at, timeout_s=timeout_s, log_path=work / "driver-1.log"
    )
    if kill_at is None:
        return summarise(total, [first], watch)
    wait_for_dead_driver_job(address, first.pid)
    watch.poll()
    flushed = watch.completed_ids()
    before = score_stamps(output)
    second = run_driver(command, output, address, total, watch, timeout_s=timeout_s, log_path=work / "driver-2.log")
    after = score_stamps(output)
    figures = summarise(total, [first, second], watch)
    rework = {entry for entry, stamp in before.items() if after.get(entry) != stamp}
    rows = watch.final_rows()
    flush_rows = yaml.safe_load(config.read_text())["batch"]["manifest_flush_rows"]
    figures.update(
        kill_at=kill_at,
        scores_at_kill=len(before),
        flushed_at_kill=len(flushed),
        unflushed_at_kill=len(set(before) - flushed),
        resumed_skipped=sum(1 for row in rows if row["status"] == SKIPPED),
        rework=len(rework),
        rework_of_flushed=len(rework & flushed),
        flush_rows=flush_rows,
        torn_parts_seen_by_resume=_torn_in(second.log),
    )
    return figures


def score_stamps(output: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every entry's score: a score written again gets a new file."""
    stamps = {}
    with os.scandir(output) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("_"):
                try:
                    info = os.stat(os.path.join(entry.path, SCORE))
                except FileNotFoundError:
                    continue
                stamps[entry.name] = (info.st_ino, info.st_mtime_ns)
    return stamps


def _torn_in(log: str) -> int:
    import re

    match = re.search(r"\| (\d+) torn manifest part", log)
    return int(match.group(1)) if match else 0
