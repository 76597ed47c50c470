"""Exponential backoff, shared by the service ledger and the batch stages.

Only transient failures (``PipelineError.retryable``) are worth another attempt:
a private video or a corrupt file fails the same way every time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from rescored_ray.errors import PipelineError

log = logging.getLogger(__name__)
T = TypeVar("T")


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Wait before retry number ``attempt`` (1-based): base, 2x base, 4x base ... capped at ``max_s``."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))


def call_with_retries(
    call: Callable[[], T],
    *,
    max_retries: int,
    base_s: float,
    max_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[T, int]:
    """Run ``call``; on a retryable :class:`PipelineError` wait and try again, at most
    ``max_retries`` more times. Returns ``(result, attempts)``; the last error is raised
    with ``attempts`` recorded on it."""
    attempt = 1
    while True:
        try:
            return call(), attempt
        except PipelineError as exc:
            exc.attempts = attempt
            if not exc.retryable or attempt > max_retries:
                raise
            delay = backoff_delay(attempt, base_s, max_s)
            log.warning(
                "transient failure in %s (attempt %d of %d), retrying in %.1f s: %s",
                exc.stage,
                attempt,
                max_retries + 1,
                delay,
                exc,
            )
            sleep(delay)
            attempt += 1
