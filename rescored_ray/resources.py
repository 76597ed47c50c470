"""How many CPU threads a model may use in this process: what Ray granted it, else what the OS does.

Why: a model runtime left to itself sizes its thread pool to the whole machine (onnxruntime
to the physical cores, torch to all of them). Inside a Ray replica or actor that shares a
node with others this oversubscribes the cores: two 1-CPU replicas on a 2-core node each
start 2 spinning threads, and the node runs 4 threads on 2 cores. Ray's CPU grant is the
contract between the replicas on a node, so a model sizes its threads from it.
"""

from __future__ import annotations

import math
import os
import sys


def process_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; cgroup-pinned containers narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def granted_cpus() -> float | None:
    """The CPUs Ray assigned to the actor or task running in this process; None outside one."""
    ray = sys.modules.get("ray")  # a process that never imported Ray is not a Ray worker
    if ray is None or not ray.is_initialized():
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # the driver has no grant (Ray raises there), and no Ray quirk may stop a model loading
        return None
    return float(cpus) if cpus else None


def model_threads(configured: int | None = None) -> int:
    """Threads for one model: ``configured`` as given, else Ray's CPU grant rounded up (a 0.5-CPU
    replica gets one thread) but no more than the process may use, else every CPU of this process."""
    if configured:
        return configured
    granted = granted_cpus()
    available = process_cpus()
    return max(1, min(available, math.ceil(granted))) if granted else available
