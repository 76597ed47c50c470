"""One process at a time compiles numba kernels into the shared on-disk cache.

librosa compiles its beat-tracking and peak-picking kernels with numba's on-disk cache
(``cache=True``), in the package's ``__pycache__``. When two processes compile the same
``guvectorize`` kernels at once, numba can write a kernel and its gufunc wrapper from
different processes under different internal names, and every process that later loads
that cache segfaults (numba#10128, numba#4807). On a fresh install this happened every
time: the batch run's notation actors all wrote their first score at once, and from then
on every process that tracked beats on that machine died (CI's segfault at stop 19).

:func:`warm_once` runs a warm-up that exercises the kernels once per process, under a
node-wide file lock: the first process compiles and writes the cache while the others
wait, then they load it whole. Machines do not share site-packages, so a lock per node is
enough (a cache directory on a shared filesystem would need a shared lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_warmed: set[str] = set()
_guard = threading.Lock()


def lock_path(name: str) -> Path:
    """The node-wide lock for ``name``'s kernels in this environment and cache directory."""
    where = f"{sys.prefix}|{os.environ.get('NUMBA_CACHE_DIR', '')}|{name}"
    key = hashlib.sha1(where.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"rescored-numba-{key}.lock"


@contextmanager
def node_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock that every process on this machine sees."""
    fd = os.open(lock_path(name), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def warm_once(name: str, warm: Callable[[], object]) -> None:
    """Run ``warm`` the first time this process asks for ``name``, holding the node-wide lock.

    If ``warm`` raises, nothing is recorded and the next call tries again.
    """
    if name in _warmed:
        return
    with _guard:
        if name in _warmed:
            return
        with node_lock(name):
            warm()
        _warmed.add(name)
