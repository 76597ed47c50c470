"""Job context for log lines: every record logged while a job runs carries its id and stage.

The context lives in :mod:`contextvars` (set by the worker for a job, by
:meth:`Timeline.stage <rescored_ray.timeline.Timeline.stage>` for a stage), and a log
record factory copies it onto each record as ``rescored_job_id`` and ``rescored_stage``.
Ray's JSON log format (``LoggingConfig(encoding="JSON")``, Serve's ``logging_config``)
writes every non-standard record attribute as a field, so the Ray dashboard's log
viewer and any log shipper can filter one job's lines. The names are prefixed because
Ray already puts its own ``job_id`` (the Ray job) on each record.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("rescored_ray")

JOB_ID_FIELD = "rescored_job_id"
STAGE_FIELD = "rescored_stage"

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(JOB_ID_FIELD, default=None)
_stage: contextvars.ContextVar[str | None] = contextvars.ContextVar(STAGE_FIELD, default=None)
_installed = False


@contextmanager
def job_context(job_id: str | None) -> Iterator[None]:
    """Log lines inside carry ``job_id`` (the stage starts unset)."""
    job_token, stage_token = _job_id.set(job_id), _stage.set(None)
    try:
        yield
    finally:
        _stage.reset(stage_token)
        _job_id.reset(job_token)


@contextmanager
def stage_context(stage: str | None) -> Iterator[None]:
    token = _stage.set(stage)
    try:
        yield
    finally:
        _stage.reset(token)


def current() -> dict[str, str]:
    """The context now set, as record fields (empty outside a job)."""
    fields = {}
    if (job_id := _job_id.get()) is not None:
        fields[JOB_ID_FIELD] = job_id
    if (stage := _stage.get()) is not None:
        fields[STAGE_FIELD] = stage
    return fields


def install() -> None:
    """Stamp the job context on every log record made in this process (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        for name, value in current().items():
            setattr(record, name, value)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
