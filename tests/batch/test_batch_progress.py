"""A batch run's live figures (issue 17): one line format, printed by the driver and read back
by the SDK; the tracker that keeps them; no cluster."""

from __future__ import annotations

import io
import time

from rescored_ray.batch.progress import Figures, LineView, Tracker, view_for
from rescored_ray.client import _BatchBar


def test_a_progress_line_reads_back_as_the_same_figures():
    figures = Figures(total=1000, completed=240, failed=3, skipped=7, elapsed_s=3725.0)
    line = figures.line()
    assert line.startswith("batch progress: 250/1000 done | 240 completed, 3 failed, 7 skipped")
    assert "| 1:02:05 elapsed" in line and "songs/h" in line and "ETA" in line
    assert Figures.parse(f"(pid=42) {line}") == figures
    assert round(figures.songs_per_hour) == round(240 / (3725 / 3600))
    assert figures.eta_s is not None and abs(figures.eta_s - 750 * 3725 / 243) < 1


def test_eta_is_unknown_before_any_work_and_zero_at_the_end():
    assert Figures(total=10, skipped=4, elapsed_s=30).eta_s is None  # skipped entries say nothing of the pace
    assert "ETA -" in Figures(total=10, elapsed_s=30).line()
    assert Figures(total=10, completed=6, skipped=4, elapsed_s=30).eta_s == 0.0


def test_the_last_line_of_a_log_wins():
    log = "\n".join(
        [
            "starting",
            Figures(total=5, completed=1, elapsed_s=3).line(),
            "a warning in between",
            Figures(total=5, completed=4, failed=1, elapsed_s=9).line(),
            "batch 2026-x: 4 completed, 1 failed, 0 skipped | ...",
        ]
    )
    last = Figures.last_in(log)
    assert last is not None and (last.done, last.failed, last.elapsed_s) == (5, 1, 9.0)
    assert Figures.last_in("no progress yet") is None


class Recorder:
    def __init__(self):
        self.shown: list[Figures] = []
        self.closed: Figures | None = None

    def show(self, figures: Figures) -> None:
        self.shown.append(figures)

    def close(self, figures: Figures) -> None:
        self.closed = figures


def test_the_tracker_counts_rows_and_shows_them_on_its_own_clock():
    view = Recorder()
    tracker = Tracker(view, every_s=0.05)
    tracker.start(6, skipped=2, failed=1)
    for status in ("completed", "failed", "completed"):
        tracker.add(status)
    time.sleep(0.3)  # no rows meanwhile: the figures still show (a long model load looks alive)
    deadline = time.monotonic() + 10  # a loaded machine may starve the tracker's thread a while
    while len(view.shown) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    tracker.close()
    assert len(view.shown) >= 3
    assert view.closed is not None
    assert (view.closed.total, view.closed.completed, view.closed.failed, view.closed.skipped) == (6, 2, 2, 2)
    assert view.closed.done == 6 and view.closed.elapsed_s >= 0.3


def test_plain_lines_off_a_terminal_and_a_bar_from_them():
    stream = io.StringIO()
    view = view_for(stream)
    assert isinstance(view, LineView)
    view.show(Figures(total=3, completed=2, elapsed_s=4))
    figures = Figures.last_in(stream.getvalue())
    assert figures is not None and figures.done == 2
    bar = _BatchBar("20261202T000000-abcdef")
    bar.show(figures)
    assert (bar.bar.n, bar.bar.total) == (2, 3)
    bar.show(None)  # no line yet: the bar stays as it was
    assert bar.bar.n == 2
    bar.close()


def test_a_live_bar_on_a_terminal():
    from rich.console import Console

    from rescored_ray.batch.progress import RichView

    screen = io.StringIO()
    tracker = Tracker(RichView(Console(file=screen, force_terminal=True, width=120)), every_s=0.05)
    tracker.start(10, skipped=2)
    for _ in range(5):
        tracker.add("completed")
    time.sleep(0.2)
    tracker.close()
    assert "7/10" in screen.getvalue() and "2 skipped" in screen.getvalue() and "ETA" in screen.getvalue()
