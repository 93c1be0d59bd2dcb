"""Property-based API fuzzing from the OpenAPI schema (schemathesis): no input gets a 5xx."""

from __future__ import annotations

import re

import schemathesis
from hypothesis import HealthCheck, given, settings

from tokenspool.stack import Stack

# streaming routes never end for a job that never finishes; they are tested on their own
STREAMING = re.compile(r".*/(events|ws)$")


def test_api_never_answers_5xx_to_generated_input(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json")
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if STREAMING.match(operation.path):
            continue

        strategy = operation.as_strategy(
            generation_mode=schemathesis.GenerationMode.POSITIVE
        ) | operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE)

        @given(case=strategy)
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call(base_url=stack.api_url, timeout=10)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])

        no_server_error()
        checked.append(f"{operation.method.upper()} {operation.path}")

    assert "POST /v1/jobs" in checked and "GET /v1/jobs/{job_id}" in checked
