"""Structured outputs, cost and the client's conveniences, end to end through the real stack."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tokenspool import AsyncClient, JobFailedError
from tokenspool.fake_llm import example_value
from tokenspool.structured import OutputValidationError, StructuredTracker

from .helpers import expected


class Forecast(BaseModel):
    city: str
    days: int
    tags: list[str]
    windy: bool


async def test_structured_returns_a_validated_instance(client: AsyncClient) -> None:
    result = await client.structured("fake-gpt", "forecast please", Forecast)

    assert result == Forecast.model_validate(example_value(Forecast.model_json_schema()))


async def test_structured_stream_yields_growing_partials_then_the_final_instance(
    client: AsyncClient,
) -> None:
    items = [item async for item in client.structured_stream("fake-gpt", "stream it", Forecast)]

    assert len(items) > 3
    assert items[-1] == Forecast.model_validate(example_value(Forecast.model_json_schema()))
    filled = [len(item.model_fields_set) for item in items[:-1]]
    assert filled == sorted(filled)  # partials only grow


async def test_json_not_matching_the_schema_fails_the_job_naming_the_path(
    client: AsyncClient,
) -> None:
    with pytest.raises(JobFailedError, match=r"\$\.days"):
        await client.structured("fake-gpt", "bad [fake badjson=1]", Forecast)


async def test_structured_job_stores_parsed_output_and_emits_object_deltas(
    client: AsyncClient,
) -> None:
    schema = Forecast.model_json_schema()
    job = await client.submit(
        "fake-gpt",
        "parsed",
        response_format={"type": "json_schema", "json_schema": {"name": "f", "schema": schema}},
    )

    acc = await client.accumulate(job.id)
    view = await client.get(job.id)

    assert view.output.parsed == example_value(schema)
    assert acc.parsed == example_value(schema)


async def test_completed_job_usage_carries_its_cost(client: AsyncClient) -> None:
    prompt = "price me [fake chunks=10]"
    want = expected("fake-gpt", prompt)
    job = await client.submit("fake-gpt", prompt)

    view = await client.wait(job.id)

    assert view.usage is not None and view.usage.cost_usd is not None
    # the test stack's made-up prices: 1e-6 per prompt token, 2e-6 per completion token
    assert view.usage.cost_usd == pytest.approx(
        want.prompt_tokens * 1e-6 + want.completion_tokens * 2e-6
    )


async def test_stream_text_yields_exactly_the_answer(client: AsyncClient) -> None:
    prompt = "text only [fake chunks=15]"

    pieces = [piece async for piece in client.stream_text("fake-gpt", prompt)]

    assert "".join(pieces) == expected("fake-gpt", prompt).text


def test_tracker_reports_partial_values_only_when_they_change() -> None:
    tracker = StructuredTracker({"type": "object", "properties": {"a": {"type": "string"}}})

    assert tracker.feed('{"a": "he') == (True, {"a": "he"})
    assert tracker.feed("") == (False, None)
    assert tracker.feed('llo"}') == (True, {"a": "hello"})
    assert tracker.finish() == {"a": "hello"}


def test_tracker_rejects_invalid_json_at_the_root() -> None:
    tracker = StructuredTracker({"type": "object"})
    tracker.feed('{"a": ')

    with pytest.raises(OutputValidationError, match=r"at \$: not valid JSON"):
        tracker.finish()


def test_tracker_names_the_nested_path_that_does_not_match() -> None:
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
    }
    tracker = StructuredTracker(schema)
    tracker.feed('{"items": [1, "two"]}')

    with pytest.raises(OutputValidationError, match=r"\$\.items\[1\]"):
        tracker.finish()


def test_sync_client_streams_follows_and_returns_structured_answers(stack) -> None:
    from tokenspool import Client

    prompt = "sync [fake chunks=9]"
    with Client(stack.api_url) as client:
        text = "".join(client.stream_text("fake-gpt", prompt))
        job = client.submit("fake-gpt", prompt)
        view = client.wait(job.id)
        forecast = client.structured("fake-gpt", "sync forecast", Forecast)

    assert text == expected("fake-gpt", prompt).text == view.output.content
    assert forecast == Forecast.model_validate(example_value(Forecast.model_json_schema()))
