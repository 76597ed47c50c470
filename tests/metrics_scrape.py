"""Reading our metrics back from Ray's metrics agent, as Prometheus would."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

RAY_TAGS = {
    "Component",
    "NodeAddress",
    "SessionName",
    "Version",
    "WorkerId",
    "otel_scope_name",
    "otel_scope_schema_url",
    "otel_scope_version",
    "JobId",
}


def scrape() -> dict[tuple[str, frozenset], float]:
    """Every ``ray_rescored_*`` sample on this node's metrics agent, summed over processes
    (Ray's own tags dropped); keys are ``(name without ray_, tags)``."""
    import ray

    port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if not sample.name.startswith("ray_rescored_"):
                continue
            tags = frozenset((k, v) for k, v in sample.labels.items() if k not in RAY_TAGS)
            key = (sample.name[len("ray_") :], tags)
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def value(samples, name: str, **tags) -> float:
    """Sum of ``name`` over every series whose tags include ``tags``."""
    wanted = {(k, str(v)) for k, v in tags.items()}
    return sum(v for (n, t), v in samples.items() if n == name and wanted <= t)


def deltas_when_settled(
    before, expected: dict[tuple[str, tuple], float], timeout: float = 30.0, tolerance: float = 0.01
):
    """Scrape until the increases since ``before`` equal ``expected`` within ``tolerance`` (counts
    are whole, audio seconds are not; the agent exports every second in the tests' Ray) or
    ``timeout`` passes; returns (increases, last scrape)."""
    deadline = time.monotonic() + timeout
    while True:
        after = scrape()
        deltas = {
            key: round(value(after, key[0], **dict(key[1])) - value(before, key[0], **dict(key[1])), 4)
            for key in expected
        }
        settled = all(abs(deltas[key] - want) <= tolerance for key, want in expected.items())
        if settled or time.monotonic() > deadline:
            return deltas, after
        time.sleep(1)
