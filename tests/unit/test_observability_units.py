"""Unit tests of the monitoring logic: timelines, the log context, metric specs, the Grafana
dashboard and docs/operations.md kept in step with the metrics that exist. (The real export through
Ray's metrics agent, the replica logs and the browser page are in test_monitoring.py and
test_status_page.py.)"""

from __future__ import annotations

import json
import logging
import re
import typing
from pathlib import Path

import pytest

from rescored_ray import logs, metrics
from rescored_ray.config import PipelineConfig
from rescored_ray.errors import PipelineError
from rescored_ray.pipeline import Pipeline
from rescored_ray.service.ingress import job_timeline
from rescored_ray.service.ledger import Attempt, JobRecord, JobStatus
from rescored_ray.timeline import Timeline, ran_on, where

ROOT = Path(__file__).resolve().parents[2]


# -- timeline -----------------------------------------------------------------------------------


def test_timeline_spans_totals_and_listeners():
    heard = []
    timeline = Timeline([lambda span: heard.append((span.stage, span.ok, logs.current().get(logs.STAGE_FIELD)))])
    with timeline.stage("download"):
        pass
    with pytest.raises(ValueError), timeline.stage("decode"):
        raise ValueError("boom")
    with timeline.stage("download"):  # a stage retried in place adds up
        pass
    assert [s.stage for s in timeline.spans] == ["download", "decode", "download"]
    assert heard == [("download", True, "download"), ("decode", False, "decode"), ("download", True, "download")]
    assert set(timeline.seconds()) == {"download", "decode"}
    assert timeline.seconds()["download"] == pytest.approx(timeline.spans[0].seconds + timeline.spans[2].seconds)
    first, second = timeline.spans[0], timeline.spans[1]
    assert first.started_at <= first.ended_at <= second.started_at
    assert first.workers == [where()] and {"host", "pid"} <= set(first.workers[0])
    as_dicts = timeline.to_list()
    assert as_dicts[1]["ok"] is False and json.dumps(as_dicts)


def test_a_failing_listener_never_fails_the_stage():
    def broken(span):
        raise RuntimeError("metrics backend down")

    timeline = Timeline([broken])
    with timeline.stage("notation"):
        pass
    assert timeline.spans[0].ok


def test_ran_on_puts_a_remote_models_identity_over_ours():
    class Remote:
        ran_on: typing.ClassVar = [{"actor": "SERVE_REPLICA::rescored#Separator#x", "pid": 1, "device": "cuda:0"}]

    class Local:
        pass

    remote = ran_on(Remote())
    assert remote[0]["pid"] == 1 and remote[0]["device"] == "cuda:0" and remote[0]["host"] == where()["host"]
    assert ran_on(Local()) == [where()]


# -- log context --------------------------------------------------------------------------------


def test_log_records_carry_the_job_and_stage_only_inside_a_job(caplog):
    logs.install()
    logs.install()  # idempotent: one factory, not two stacked
    logger = logging.getLogger("rescored_ray.test")
    with caplog.at_level(logging.INFO, logger="rescored_ray.test"):
        logger.info("outside")
        with logs.job_context("job-1"):
            logger.info("in job")
            with logs.stage_context("separation"):
                logger.info("in stage")
            logger.info("after stage")
        logger.info("outside again")
    fields = [
        (r.getMessage(), getattr(r, logs.JOB_ID_FIELD, None), getattr(r, logs.STAGE_FIELD, None))
        for r in caplog.records
    ]
    assert fields == [
        ("outside", None, None),
        ("in job", "job-1", None),
        ("in stage", "job-1", "separation"),
        ("after stage", "job-1", None),
        ("outside again", None, None),
    ]


def test_an_unexpected_error_logs_its_traceback_exactly_once(caplog, chorale_encoded):
    class BrokenTranscriber:
        def transcribe_stems(self, stems, wanted=None, progress=None):
            raise RuntimeError("onnx session exploded")

    config = PipelineConfig.model_validate({"separation": {"model": "none"}, "write_preview": False})
    pipeline = Pipeline(config, transcriber=BrokenTranscriber())
    logs.install()
    with caplog.at_level(logging.DEBUG), logs.job_context("job-2"), pytest.raises(PipelineError) as raised:
        pipeline.run(str(chorale_encoded["flac"]), "/nonexistent-never-written")
    assert raised.value.stage == "transcription" and raised.value.retryable
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1
    assert getattr(with_traceback[0], logs.STAGE_FIELD) == "transcription"
    assert getattr(with_traceback[0], logs.JOB_ID_FIELD) == "job-2"


# -- job timeline as the API shows it -----------------------------------------------------------


def test_job_timeline_shows_queue_time_each_attempt_and_the_running_stage():
    spans_1 = [{"stage": "download", "started_at": 11.0, "ended_at": 12.0, "ok": False, "workers": [{"pid": 7}]}]
    job = JobRecord(
        job_id="j",
        source="s",
        dedup_key="k",
        options={},
        priority="high",
        status=JobStatus.RUNNING,
        created_at=10.0,
        current_stage="separation",
        attempts=[Attempt(1, "worker-a", 11.0, 12.0, "retrying", timeline=spans_1), Attempt(2, "worker-b", 14.0)],
    )
    spans = job_timeline(job)
    assert [(s["stage"], s["attempt"], s["seconds"], s["ok"]) for s in spans] == [
        ("queued", 1, 1.0, True),
        ("download", 1, 1.0, False),
        ("queued", 2, 2.0, True),
        ("separation", 2, None, None),
    ]
    assert spans[-1]["workers"] == [{"worker_id": "worker-b"}] and spans[-1]["ended_at"] is None


def test_a_queued_job_shows_its_open_wait():
    job = JobRecord(
        job_id="j", source="s", dedup_key="k", options={}, priority="default", status=JobStatus.QUEUED, created_at=10.0
    )
    assert [(s["stage"], s["attempt"], s["ended_at"]) for s in job_timeline(job)] == [("queued", 1, None)]


# -- metric specs, dashboard and docs -----------------------------------------------------------


def test_metric_tags_are_checked():
    with pytest.raises(ValueError, match="takes tags"):
        metrics.inc("rescored_jobs_completed_total", priority="high", stage="download")
    with pytest.raises(KeyError):
        metrics.inc("rescored_no_such_metric")
    assert all(name.startswith("rescored_") for name in metrics.METRICS)
    assert all(spec.boundaries for spec in metrics.METRICS.values() if spec.kind == "histogram")


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((ROOT / "configs" / "grafana" / "rescored.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_grafana_dashboard_is_valid_promql_and_plots_every_metric():
    import promql_parser

    plotted = set()
    for expr in _dashboard_exprs():
        promql_parser.parse(expr.replace("$SessionName", ".+"))  # raises on a syntax error
        for name in re.findall(r"ray_(rescored_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base in metrics.METRICS, f"dashboard plots {name}, which no code records"
            plotted.add(base)
    assert plotted == set(metrics.METRICS), f"not plotted: {set(metrics.METRICS) - plotted}"


def test_operations_doc_lists_every_metric():
    doc = (ROOT / "docs" / "operations.md").read_text()
    missing = [name for name in metrics.METRICS if name not in doc]
    assert not missing, f"docs/operations.md does not mention {missing}"
