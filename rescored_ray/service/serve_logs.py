"""Our log lines in each Serve replica's own log file, with the job context on them.

Serve writes a replica's log file through the ``ray.serve`` logger only; records of
other loggers go to the worker's stderr, away from the replica's log in the dashboard.
:func:`route_to_replica_log` sends the ``rescored_ray`` loggers through the same
handlers, and installs the record factory that stamps ``rescored_job_id`` and
``rescored_stage`` (:mod:`rescored_ray.logs`); with the deployments' JSON encoding
(``log_encoding`` in the service config) they become fields of each JSON line.
"""

from __future__ import annotations

import logging

from rescored_ray import logs


def route_to_replica_log(level: int = logging.INFO) -> None:
    """Call from a deployment's ``__init__`` (idempotent)."""
    logs.install()
    serve_logger = logging.getLogger("ray.serve")
    ours = logging.getLogger("rescored_ray")
    ours.setLevel(level)
    for handler in serve_logger.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)
    if serve_logger.handlers:
        ours.propagate = False  # once, in the replica log: not again on stderr
