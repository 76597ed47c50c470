"""Property-based API tests from the app's own OpenAPI schema (Schemathesis, against the
running Serve app): whatever the generated request, never a 5xx, and responses that the
schema documents match it."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.service_app import deploy


@pytest.fixture(scope="module")
def base_url(serve_port, tmp_path_factory):
    from ray import serve

    # no retries and one worker: generated jobs (random hosts) fail fast and never pile up
    deploy(
        tmp_path_factory.mktemp("schema-data"),
        max_retries=0,
        pipeline={
            "separation": {"model": "none"},
            "transcription": {"stems": ["mix"]},
            "write_preview": False,
            "source": {"socket_timeout_s": 2},
        },
    )
    yield f"http://127.0.0.1:{serve_port}"
    serve.delete("rescored")


@pytest.fixture(scope="module")
def api_schema(base_url):
    assert "/api/v1/transcribe" in httpx.get(f"{base_url}/openapi.json", timeout=30).json()["paths"]
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_no_server_errors_and_documented_responses_match(api_schema):
    """Every operation of the schema, each with generated requests (Schemathesis' strategies
    driven by Hypothesis directly: its pytest plugin does not run under this pytest)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    statuses: dict[str, list[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def exercise(case):
            response = case.call_and_validate(checks=checks, timeout=30)
            statuses.setdefault(operation.label, []).append(response.status_code)  # noqa: B023

        exercise()
    assert set(statuses) == {operation.label for operation in operations}
    assert all(code < 500 for codes in statuses.values() for code in codes)
    print({label: sorted(set(codes)) for label, codes in statuses.items()})
