"""Every error this package raises on purpose, in one tree.

::

    RescoredError                      .code (stable, snake_case), .message
    ├── ConfigError                    invalid settings, unknown RESCORED_* variable      config
    ├── PipelineError                  a stage failed: .stage, .retryable, .attempts      pipeline_error
    │   ├── RetryableError             transient: network, busy host, GPU memory          transient_error
    │   │   ├── UnexpectedError        an exception nobody anticipated (the rule below)   unexpected_error
    │   │   ├── TimeLimitExceeded      the soft time limit passed                         time_limit_exceeded
    │   │   └── LeaseLost              another worker owns the job now                    lease_lost
    │   ├── NonRetryableError          permanent: invalid, private, too long, not audio   permanent_error
    │   │   └── ModelLoadError         a model's weights cannot be had                    model_load_error
    │   ├── JobCancelled               the user cancelled the job                         job_cancelled
    │   └── JobFailed                  SDK: a service job failed (its stage, retryable)   job_failed
    ├── ServiceError                   the service refused a request: .status_code        (by subclass)
    │   ├── InvalidRequest             400                                                invalid_request
    │   ├── Unauthorized               401                                                unauthorized
    │   ├── Forbidden                  403                                                forbidden
    │   ├── NotFound                   404 (route, file, or a result not there yet)       not_found
    │   │   └── JobNotFound            404 unknown or expired job                         job_not_found
    │   ├── MethodNotAllowed           405                                                method_not_allowed
    │   ├── LengthRequired             411                                                length_required
    │   ├── PayloadTooLarge            413                                                payload_too_large
    │   ├── RateLimited                429: .retry_after_s                                rate_limited
    │   └── InternalError              500                                                internal_error
    ├── BatchFailed                    SDK: a batch run (a Ray job) did not succeed       batch_failed
    └── NonPublicAddress               also an OSError: a connection to a non-public      non_public_address
                                       address was refused (HTTP libraries treat it as a
                                       connection failure; the download stage makes it permanent)

**The rule for unexpected errors** (:func:`unexpected`): an exception that is not a
:class:`RescoredError` is a bug or a misbehaving environment (a full disk, a library
hiccup), and from inside a stage we cannot tell which. It becomes an
:class:`UnexpectedError` of that stage, **retryable**: its traceback is logged once, where
it happened, and the job layers retry it within their budget (3 retries in the service,
``max_retries`` in batch runs) before it fails for good. A full disk then recovers
on its own, and a real bug costs a few bounded retries, not a lost job. A
``MemoryError`` is retryable for the same reason. Nothing else is wrapped: a
:class:`PipelineError` keeps its own ``retryable``.

The service puts ``code`` into every error body (``{"error": {"code": ..., "message": ...}}``)
and into every failed job's ``error``; the SDK raises the class registered for the code
(:func:`service_error`), never by matching message text. Every error survives pickling
with its attributes (Ray moves them between processes).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

log = logging.getLogger(__name__)


class RescoredError(Exception):
    """Base of every error raised on purpose. ``code`` is stable: clients may branch on it."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # keep every attribute across pickling (Ray, multiprocessing)
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[RescoredError], message: str, state: dict[str, Any]) -> RescoredError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConfigError(RescoredError):
    """Settings that cannot be used: a bad value, an unknown key or environment variable."""

    code = "config"


# -- pipeline ------------------------------------------------------------------------------------


class PipelineError(RescoredError):
    """A failure of one pipeline stage.

    ``stage`` is one of ``source``, ``download``, ``decode``, ``separation``,
    ``transcription``, ``notation`` (or ``pipeline``); ``retryable`` tells a job runner
    whether a later attempt may succeed; ``attempts`` how many were made.
    """

    code = "pipeline_error"
    retryable: bool = True

    def __init__(self, message: str, *, stage: str = "pipeline", retryable: bool | None = None, attempts: int = 1):
        super().__init__(message)
        self.stage = stage
        if retryable is not None:
            self.retryable = retryable
        self.attempts = attempts

    def to_dict(self) -> dict[str, Any]:
        """The job record's ``error`` (and the WebSocket's)."""
        return {
            "type": type(self).__name__,
            "code": self.code,
            "message": self.message,
            "stage": self.stage,
            "retryable": self.retryable,
        }


class RetryableError(PipelineError):
    """Transient: network trouble, a busy host, a GPU that ran out of memory."""

    code = "transient_error"
    retryable = True


class NonRetryableError(PipelineError):
    """Permanent: invalid, private, age-restricted, removed, too long, not audio."""

    code = "permanent_error"
    retryable = False


class UnexpectedError(RetryableError):
    """An exception nobody anticipated, made a stage error by :func:`unexpected`."""

    code = "unexpected_error"


class TimeLimitExceeded(RetryableError):
    """The soft time limit passed: this attempt stops and the job is retried."""

    code = "time_limit_exceeded"


class LeaseLost(RetryableError):
    """Our lease expired (we were too slow to heartbeat); another worker owns the job now."""

    code = "lease_lost"


class ModelLoadError(NonRetryableError):
    """The model's weights cannot be had (offline, missing cache, bad repo folder)."""

    code = "model_load_error"


class JobCancelled(PipelineError):
    """The user cancelled the job: raised inside a running job (at a checkpoint) and by the
    SDK when a job it waits for was cancelled."""

    code = "job_cancelled"
    retryable = False

    def __init__(self, message: str = "cancelled by the user", *, job_id: str | None = None, stage: str = "pipeline"):
        super().__init__(message, stage=stage, retryable=False)
        self.job_id = job_id


class JobFailed(PipelineError):
    """SDK: the job failed in the service; ``stage``, ``retryable`` and ``error`` (the job's
    error record) say where and whether trying again could help."""

    code = "job_failed"

    def __init__(self, job_id: str, error: dict[str, Any] | None):
        error = dict(error or {})
        stage = error.get("stage") or "pipeline"
        retryable = bool(error.get("retryable"))
        message = error.get("message") or "job failed"
        super().__init__(message, stage=stage, retryable=retryable)
        self.job_id = job_id
        self.error = error

    def __str__(self) -> str:
        kind = "transient" if self.retryable else "permanent"
        return f"job {self.job_id} failed in {self.stage} ({kind}): {self.message}"


def unexpected(exc: BaseException, stage: str) -> PipelineError:
    """The one rule for exceptions nobody anticipated (see the module docstring).

    A :class:`PipelineError` is returned as it is; anything else becomes a retryable
    :class:`UnexpectedError` of ``stage``. The caller raises the result ``from exc`` and,
    for a real surprise, logs the traceback once (:func:`log_unexpected`).
    """
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, MemoryError):
        return UnexpectedError(f"out of memory in {stage}", stage=stage)
    return UnexpectedError(f"unexpected error in {stage}: {type(exc).__name__}: {exc}", stage=stage)


def log_unexpected(exc: BaseException, stage: str) -> None:
    """Log the traceback of an unexpected exception, once, where it happened."""
    if not isinstance(exc, (PipelineError, MemoryError)):
        log.error("unexpected error in stage %s", stage, exc_info=exc)


# -- the service's answers -----------------------------------------------------------------------


class ServiceError(RescoredError):
    """The service refused a request: ``status_code`` (4xx/5xx), ``code``, ``message``."""

    code = "service_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, status_code: int | None = None, **details: Any):
        super().__init__(message)
        self.status_code = status_code or self.status
        self.details = details

    def __str__(self) -> str:
        return f"{self.status_code} {self.code}: {self.message}"

    def body(self) -> dict[str, Any]:
        """The JSON body the service answers with."""
        return {"error": {"code": self.code, "message": self.message}, **self.details}


class InvalidRequest(ServiceError):
    code, status = "invalid_request", 400


class Unauthorized(ServiceError):
    code, status = "unauthorized", 401


class Forbidden(ServiceError):
    code, status = "forbidden", 403


class NotFound(ServiceError):
    code, status = "not_found", 404


class JobNotFound(NotFound):
    code = "job_not_found"


class MethodNotAllowed(ServiceError):
    code, status = "method_not_allowed", 405


class LengthRequired(ServiceError):
    code, status = "length_required", 411


class PayloadTooLarge(ServiceError):
    code, status = "payload_too_large", 413


class RateLimited(ServiceError):
    """A client is over one of its limits; ``retry_after_s`` says when to try again."""

    code, status = "rate_limited", 429

    def __init__(self, message: str, retry_after_s: float = 0.0, **details: Any):
        super().__init__(message, **details)
        self.retry_after_s = retry_after_s


class InternalError(ServiceError):
    code, status = "internal_error", 500


SERVICE_ERRORS: dict[str, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        JobNotFound,
        MethodNotAllowed,
        LengthRequired,
        PayloadTooLarge,
        RateLimited,
        InternalError,
    )
}
"""Every ``error.code`` the service answers with, and the class the SDK raises for it."""

_BY_STATUS = {cls.status: cls for cls in SERVICE_ERRORS.values() if cls is not JobNotFound}


def service_error(status_code: int, body: Any) -> ServiceError:
    """The exception for one error response: by its ``error.code``, else by its status."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = error.get("code"), str(error.get("message") or "")
    else:  # not our service (a proxy's error page, say): keep what it said
        code, message = None, str(error or body or "")
    cls = SERVICE_ERRORS.get(str(code)) or _BY_STATUS.get(status_code, ServiceError)
    details = {k: v for k, v in body.items() if k != "error"} if isinstance(body, dict) else {}
    if cls is RateLimited:
        return RateLimited(message, float(details.get("retry_after_seconds") or 0), status_code=status_code, **details)
    return cls(message, status_code=status_code, **details)


# -- the rest ------------------------------------------------------------------------------------


class BatchFailed(RescoredError):
    """SDK: a batch run submitted through the Ray Jobs API ended without succeeding."""

    code = "batch_failed"


class NonPublicAddress(RescoredError, OSError):
    """A connection to a non-public address was refused (an OSError too, so HTTP libraries
    report it like any connection failure; :mod:`rescored_ray.source` makes it permanent)."""

    code = "non_public_address"
