"""Error types shared by every stage.

Every failure a user can see is a :class:`PipelineError` that says which stage
failed and whether trying again could help. The job layers (Serve, Ray Data)
decide about retries from ``retryable`` alone, the way the Celery design split
``NonRetryableError`` from transient network or GPU errors.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure of one pipeline stage.

    ``stage`` is one of ``source``, ``download``, ``decode``, ``separation``,
    ``transcription``, ``notation`` (or ``pipeline``); ``retryable`` tells a job
    runner whether a later attempt may succeed.
    """

    retryable: bool = True

    def __init__(self, message: str, *, stage: str = "pipeline", retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        self.stage = stage
        if retryable is not None:
            self.retryable = retryable

    def to_dict(self) -> dict:
        return {
            "type": type(self).__name__,
            "message": self.message,
            "stage": self.stage,
            "retryable": self.retryable,
        }

    def __reduce__(self):  # keep stage/retryable across pickling (Ray, multiprocessing)
        return (_rebuild, (type(self), self.message, self.stage, self.retryable))


def _rebuild(cls, message, stage, retryable):
    return cls(message, stage=stage, retryable=retryable)


class RetryableError(PipelineError):
    """Transient: network trouble, a busy host, a GPU that ran out of memory."""

    retryable = True


class NonRetryableError(PipelineError):
    """Permanent: invalid, private, age-restricted, removed, too long, not audio."""

    retryable = False
