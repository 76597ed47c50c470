"""rescored-ray: recorded music to sheet music, on Ray.

The pipeline core (this package minus ``rescored_ray.service``/``rescored_ray.batch``)
imports no Ray: stages work on arrays and can run anywhere. The SDK names
(``Client``, ``AsyncClient``, ``transcribe``, ``Score``, ...) load on first use, so
``import rescored_ray`` stays light.
"""

from typing import Any

from rescored_ray.errors import NonRetryableError, PipelineError, RetryableError
from rescored_ray.types import Audio, Note

__version__ = "0.1.0"

_LAZY = {
    "Client": "rescored_ray.client",
    "AsyncClient": "rescored_ray.client",
    "Job": "rescored_ray.client",
    "AsyncJob": "rescored_ray.client",
    "BatchRun": "rescored_ray.client",
    "JobFailed": "rescored_ray.client",
    "JobCancelled": "rescored_ray.client",
    "ServiceError": "rescored_ray.client",
    "JobNotFound": "rescored_ray.client",
    "submit_batch": "rescored_ray.client",
    "Score": "rescored_ray.score",
    "transcribe": "rescored_ray.local",
}

__all__ = ["Audio", "Note", "PipelineError", "RetryableError", "NonRetryableError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rescored_ray' has no attribute {name!r}")
