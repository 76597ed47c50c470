"""One error tree: stable codes, the SDK's mapping by code, attributes across pickling, and
one rule for unexpected exceptions wherever they happen."""

import inspect
import pickle

import pytest

from rescored_ray import errors, notation
from rescored_ray.config import NotationConfig
from rescored_ray.errors import (
    SERVICE_ERRORS,
    JobCancelled,
    JobFailed,
    JobNotFound,
    NonPublicAddress,
    PipelineError,
    RateLimited,
    RescoredError,
    RetryableError,
    UnexpectedError,
    service_error,
    unexpected,
)
from rescored_ray.pipeline import _in_stage
from rescored_ray.types import Note

CLASSES = [cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, BaseException)]


def test_one_root_and_unique_codes():
    assert all(issubclass(cls, RescoredError) for cls in CLASSES), "every error descends from RescoredError"
    codes = [cls.code for cls in CLASSES if "code" in cls.__dict__]
    assert len(codes) == len(set(codes))
    assert all(cls.__name__ in errors.__doc__ for cls in CLASSES), "the module docstring draws every class"
    assert issubclass(NonPublicAddress, OSError)


def test_the_sdk_maps_codes_not_message_text():
    assert type(service_error(404, {"error": {"code": "job_not_found", "message": "whatever it says"}})) is JobNotFound
    assert type(service_error(404, {"error": {"code": "not_found", "message": "job not found"}})) is errors.NotFound
    limited = service_error(429, {"error": {"code": "rate_limited", "message": "slow down"}, "retry_after_seconds": 7})
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 7 and limited.status_code == 429
    assert type(service_error(502, "<html>bad gateway</html>")) is errors.ServiceError  # not our service
    for code, cls in SERVICE_ERRORS.items():
        assert type(service_error(cls.status, cls("m").body())) is cls and cls("m").body()["error"]["code"] == code


@pytest.mark.parametrize(
    "error",
    [
        RetryableError("blip", stage="download", attempts=3),
        JobCancelled(job_id="j1"),
        JobFailed("j2", {"stage": "decode", "retryable": False, "message": "not audio"}),
        RateLimited("slow down", 12.5, retry_after_seconds=13),
        NonPublicAddress("refused"),
        UnexpectedError("boom", stage="notation"),
    ],
)
def test_attributes_survive_pickling(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.__dict__ == error.__dict__ and str(copy) == str(error)


def test_retries_record_attempts_on_the_error_and_it_survives_pickling():
    from rescored_ray.retry import call_with_retries

    def always_busy():
        raise RetryableError("busy", stage="download")

    with pytest.raises(RetryableError) as caught:
        call_with_retries(always_busy, max_retries=2, base_s=0.0, max_s=0.0, sleep=lambda s: None)
    assert pickle.loads(pickle.dumps(caught.value)).attempts == 3


def test_one_rule_for_unexpected_errors_in_every_stage(monkeypatch, caplog):
    assert unexpected(ValueError("x"), "decode").retryable is True
    assert isinstance(unexpected(MemoryError(), "separation"), UnexpectedError)
    permanent = errors.NonRetryableError("bad", stage="source")
    assert unexpected(permanent, "decode") is permanent

    with pytest.raises(UnexpectedError) as in_pipeline:
        _in_stage("transcription", lambda: 1 / 0)
    assert in_pipeline.value.stage == "transcription" and in_pipeline.value.retryable

    def broken(*args, **kwargs):
        raise KeyError("a music21 surprise")

    monkeypatch.setattr(notation, "_notate", broken)  # notation follows the same rule (it was permanent)
    with pytest.raises(UnexpectedError) as in_notation:
        notation.notate([Note(0.0, 0.5, 60)], NotationConfig())
    assert in_notation.value.stage == "notation" and in_notation.value.retryable
    assert isinstance(in_notation.value, PipelineError)
    assert sum("unexpected error in stage" in r.message for r in caplog.records) == 2  # traceback once each
