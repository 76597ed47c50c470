"""Live figures of a batch run for whoever launched it: entries done of total, failures, songs
per hour and an ETA.

One snapshot (:class:`Figures`) and one line format, written and read here only: the CLI
prints it as plain lines when its output is not a terminal (what ``ray job logs`` shows), draws
it with rich on a terminal, and ``Client.batch(...).wait()`` reads the lines back from the job's
logs into a tqdm bar. Ray Data's operator bars show the stages; these figures show the run.
Imports nothing heavy: the SDK parses the lines without Ray or rich.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Protocol

PREFIX = "batch progress:"
_LINE = re.compile(
    r"batch progress: (?P<done>\d+)/(?P<total>\d+) done \| (?P<completed>\d+) completed, "
    r"(?P<failed>\d+) failed, (?P<skipped>\d+) skipped \| (?P<rate>[\d.]+) songs/h \| "
    r"ETA (?P<eta>[\d:]+|-) \| (?P<elapsed>[\d:]+) elapsed"
)


@dataclass(frozen=True)
class Figures:
    """Where a run stands. ``skipped`` entries were done by an earlier run (resume)."""

    total: int
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.skipped

    @property
    def songs_per_hour(self) -> float:
        """Songs transcribed by this run per hour of its wall time."""
        return self.completed / (self.elapsed_s / 3600.0) if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at this run's pace so far (None until an entry has been worked on)."""
        worked = self.completed + self.failed
        left = self.total - self.done
        if left <= 0:
            return 0.0
        if worked == 0 or self.elapsed_s <= 0:
            return None
        return left * self.elapsed_s / worked

    def line(self) -> str:
        eta = self.eta_s
        return (
            f"{PREFIX} {self.done}/{self.total} done | {self.completed} completed, {self.failed} failed,"
            f" {self.skipped} skipped | {self.songs_per_hour:.0f} songs/h"
            f" | ETA {'-' if eta is None else clock(eta)} | {clock(self.elapsed_s)} elapsed"
        )

    @classmethod
    def parse(cls, text: str) -> Figures | None:
        """The figures of a :meth:`line` (anywhere in ``text``), else None."""
        match = _LINE.search(text)
        if match is None:
            return None
        return cls(
            total=int(match["total"]),
            completed=int(match["completed"]),
            failed=int(match["failed"]),
            skipped=int(match["skipped"]),
            elapsed_s=seconds(match["elapsed"]),
        )

    @classmethod
    def last_in(cls, text: str) -> Figures | None:
        """The latest figures in a log (the last progress line)."""
        at = text.rfind(PREFIX)
        return cls.parse(text[at:]) if at >= 0 else None


def clock(value: float) -> str:
    """Seconds as ``H:MM:SS``."""
    whole = max(0, round(value))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def seconds(text: str) -> float:
    hours, minutes, secs = (int(part) for part in text.split(":"))
    return float(hours * 3600 + minutes * 60 + secs)


class View(Protocol):
    def show(self, figures: Figures) -> None: ...

    def close(self, figures: Figures) -> None: ...


class Tracker:
    """The run's counts, kept by the driver as rows come back and shown by a view every
    ``every_s`` seconds from a thread of its own (a long model load still shows as alive)."""

    def __init__(self, view: View | None = None, every_s: float = 3.0):
        self.view = view
        self.every_s = every_s
        self._lock = threading.Lock()
        self._figures = Figures(total=0)
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = False

    def start(self, total: int, skipped: int = 0, failed: int = 0) -> None:
        with self._lock:
            self._started = time.monotonic()
            self._figures = Figures(total=total, skipped=skipped, failed=failed)
        self.started = True
        if self.view is not None and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="batch-progress", daemon=True)
            self._thread.start()

    def add(self, status: str) -> None:
        with self._lock:
            figures = self._figures
            self._figures = Figures(
                total=figures.total,
                completed=figures.completed + (status == "completed"),
                failed=figures.failed + (status == "failed"),
                skipped=figures.skipped + (status == "skipped"),
            )

    def figures(self) -> Figures:
        with self._lock:
            figures = self._figures
        return Figures(
            figures.total, figures.completed, figures.failed, figures.skipped, time.monotonic() - self._started
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.view is not None and self.started:
            self.view.close(self.figures())

    def _loop(self) -> None:
        assert self.view is not None
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(Exception):  # a display hiccup must not end the run
                self.view.show(self.figures())


class LineView:
    """Plain progress lines (``ray job logs``, a file, a pipe)."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr

    def show(self, figures: Figures) -> None:
        print(figures.line(), file=self.stream, flush=True)

    def close(self, figures: Figures) -> None:
        self.show(figures)


class RichView:
    """A live bar on the terminal: done/total, failures, songs per hour, ETA."""

    def __init__(self, console: Any = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
            refresh_per_second=2,
        )
        self.task = self.progress.add_task("batch", total=None, detail="")
        self.started = False

    def show(self, figures: Figures) -> None:
        if not self.started:  # drawn from the first figures on, not while the inputs are listed
            self.progress.start()
            self.started = True
        eta = figures.eta_s
        detail = (
            f"{figures.failed} failed, {figures.skipped} skipped | {figures.songs_per_hour:.0f} songs/h"
            f" | ETA {'-' if eta is None else clock(eta)}"
        )
        self.progress.update(self.task, total=figures.total, completed=figures.done, detail=detail)

    def close(self, figures: Figures) -> None:
        if figures.total:
            self.show(figures)
        if self.started:
            self.progress.stop()


def view_for(stream: IO[str] | None = None, rich: bool | None = None) -> View:
    """Rich on a terminal, plain lines anywhere else (``rich`` forces one or the other)."""
    stream = stream or sys.stderr
    if rich is None:
        rich = stream.isatty()
    return RichView() if rich else LineView(stream)
