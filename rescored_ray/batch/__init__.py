"""Bulk transcription of playlists with Ray Data (``rescored-ray batch``, ``jobs/transcribe_playlist.py``)."""

from rescored_ray.batch.config import BatchConfig, load_batch_config
from rescored_ray.batch.runner import BatchSummary, run_batch

__all__ = ["BatchConfig", "BatchSummary", "load_batch_config", "run_batch"]
