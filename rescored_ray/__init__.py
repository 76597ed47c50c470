"""rescored-ray: recorded music to sheet music, on Ray.

The pipeline core (this package minus ``rescored_ray.serve``/``rescored_ray.batch``)
imports no Ray: stages work on arrays and can run anywhere.
"""

from rescored_ray.errors import NonRetryableError, PipelineError, RetryableError
from rescored_ray.types import Audio, Note

__version__ = "0.1.0"

__all__ = ["Audio", "Note", "PipelineError", "RetryableError", "NonRetryableError", "__version__"]
