"""Bulk transcription of playlists with Ray Data (``rescored-ray batch``, ``python -m rescored_ray.batch``).

``run_batch`` and ``BatchSummary`` load on first use: the settings root imports this
package's ``config`` without pulling in the runner.
"""

from typing import Any

__all__ = ["BatchSummary", "run_batch"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rescored_ray.batch import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'rescored_ray.batch' has no attribute {name!r}")
