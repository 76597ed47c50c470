"""librosa's numba cache survives processes that start together (numba#10128).

Without the node-wide lock, three processes compiling librosa's beat kernels at once left a
cache that crashed every later process with SIGSEGV (3 trials out of 3 here; CI at stop 19).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rescored_ray.notation import numba_cache

pytestmark = pytest.mark.slow

WARM = "from rescored_ray.notation.beats import warm_up; warm_up()"

TRACK = """
import numpy as np
from rescored_ray.notation.beats import track_beats
from rescored_ray.types import Note

rng = np.random.default_rng(7)
times = 0.4 + np.cumsum(np.full(40, 0.55) + rng.normal(0, 0.01, 40))
notes = [Note(float(t), float(t) + 0.3, 55 + int(rng.integers(0, 12)), 70) for t in times]
rate = 44100
audio = rng.normal(0, 0.01, int(rate * (times[-1] + 1))).astype(np.float64)
for t in times:
    audio[int(t * rate) : int(t * rate) + 800] += 0.5
with_audio = track_beats(notes, audio, rate)
notes_only = track_beats(notes)
assert with_audio is not None and notes_only is not None
print(len(with_audio.times), len(notes_only.times))
"""


def _snapshot(cache: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(cache)): (p.stat().st_mtime_ns, p.stat().st_size) for p in cache.rglob("*") if p.is_file()
    }


def test_processes_warming_together_leave_a_cache_that_covers_and_loads(tmp_path):
    cache = tmp_path / "numba"
    cache.mkdir()
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    together = [
        subprocess.Popen([sys.executable, "-c", WARM], env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)
    ]
    for proc in together:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    written = _snapshot(cache)
    assert any(name.endswith(".nbi") for name in written), "the warm-up compiled nothing into the cache"

    later = subprocess.run([sys.executable, "-c", TRACK], env=env, capture_output=True, text=True, timeout=600)
    assert later.returncode == 0, f"rc {later.returncode}: {later.stderr[-2000:]}"
    beats_with_audio, beats_notes_only = map(int, later.stdout.split())
    assert beats_with_audio >= 30 and beats_notes_only >= 30
    assert _snapshot(cache) == written, "real beat tracking compiled a kernel the warm-up does not cover"


def test_the_lock_is_per_environment_and_cache_dir(monkeypatch):
    first = numba_cache.lock_path("librosa-beats")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/elsewhere")
    assert numba_cache.lock_path("librosa-beats") != first
    assert numba_cache.lock_path("other") != numba_cache.lock_path("librosa-beats")


def test_a_failed_warm_up_is_tried_again():
    calls = []

    def failing():
        calls.append(1)
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        numba_cache.warm_once("test-failing", failing)
    numba_cache.warm_once("test-failing", lambda: calls.append(2))
    numba_cache.warm_once("test-failing", lambda: calls.append(3))
    assert calls == [1, 2]
