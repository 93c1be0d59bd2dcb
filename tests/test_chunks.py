"""ChunkMapper turns OpenAI ``chat.completion.chunk`` dicts into typed events."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenspool import fake_llm
from tokenspool.chunks import ChunkMapper
from tokenspool.events import (
    ContentDelta,
    ReasoningDelta,
    ToolCallDelta,
    ToolCallDone,
    Usage,
    UsageInfo,
    _Event,
)

JOB_ID = "job_chunks"
EXAMPLES = settings(max_examples=100, deadline=None)

# ---------------------------------------------------------------- factories


def make_chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


def make_usage_chunk(prompt: int, completion: int, total: int | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion if total is None else total,
        },
    }


def tool_chunk(
    index: int, arguments: str, *, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """A tool-call delta: the first carries id and name, the later ones only arguments."""
    entry: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        entry.update(id=call_id, type="function")
        entry["function"]["name"] = name
    return make_chunk({"tool_calls": [entry]})


def tool_chunks(index: int, pieces: list[str]) -> list[dict[str, Any]]:
    return [
        tool_chunk(index, piece, call_id=f"call_{index}", name=f"tool_{index}")
        if i == 0
        else tool_chunk(index, piece)
        for i, piece in enumerate(pieces)
    ]


def feed_all(chunks: Iterable[dict[str, Any]], *, finish: bool = True) -> list[_Event]:
    mapper = ChunkMapper(JOB_ID, 1)
    out: list[_Event] = []
    for chunk in chunks:
        out += mapper.feed(chunk)
    if finish:
        out += mapper.finish()
    return out


def of_type(events: list[_Event], cls: type[_Event]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def split_json_dict(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    value = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
    text = json.dumps(value)
    cuts = draw(st.lists(st.integers(0, len(text)), max_size=12))
    return value, split(text, cuts)


# ---------------------------------------------------------------- tests


def test_chunk_mapper_maps_content_and_reasoning_to_deltas() -> None:
    chunks = [
        make_chunk({"role": "assistant", "content": ""}),
        make_chunk({"reasoning_content": "hmm "}),
        make_chunk({"reasoning_content": "ok"}),
        make_chunk({"content": "Hello"}),
        make_chunk({"content": ", world"}),
        make_chunk({}, "stop"),
    ]

    events = feed_all(chunks)

    assert [(e.type, e.text) for e in events] == [  # type: ignore[attr-defined]
        ("reasoning.delta", "hmm "),
        ("reasoning.delta", "ok"),
        ("content.delta", "Hello"),
        ("content.delta", ", world"),
    ]
    assert all(e.job_id == JOB_ID and e.attempt == 1 for e in events)


def test_chunk_mapper_records_finish_reason_and_output_chars() -> None:
    mapper = ChunkMapper(JOB_ID, 1)

    mapper.feed(make_chunk({"reasoning_content": "ab"}))
    mapper.feed(make_chunk({"content": "cde"}))
    mapper.feed(make_chunk({}, "length"))

    assert mapper.finish_reason == "length"
    assert mapper.output_chars == 5


def test_chunk_mapper_relays_only_the_first_choice() -> None:
    chunk = make_chunk({"content": "first"})
    chunk["choices"].append({"index": 1, "delta": {"content": "second"}, "finish_reason": None})

    events = feed_all([chunk])

    assert [e.text for e in of_type(events, ContentDelta)] == ["first"]


def test_chunk_mapper_first_tool_delta_carries_id_and_name_later_only_arguments() -> None:
    chunks = [*tool_chunks(0, ['{"city":', ' "Paris"}']), make_chunk({}, "tool_calls")]

    events = feed_all(chunks)

    deltas = of_type(events, ToolCallDelta)
    assert [(d.index, d.id, d.name, d.arguments_delta) for d in deltas] == [
        (0, "call_0", "tool_0", '{"city":'),
        (0, None, None, ' "Paris"}'),
    ]
    done = of_type(events, ToolCallDone)
    assert [(d.index, d.id, d.name, d.arguments) for d in done] == [
        (0, "call_0", "tool_0", '{"city": "Paris"}')
    ]
    assert events[-1] is done[0]


@EXAMPLES
@given(split_json_dict())
def test_chunk_mapper_done_reassembles_json_split_anywhere(
    value_pieces: tuple[dict[str, Any], list[str]],
) -> None:
    value, pieces = value_pieces
    chunks = [*tool_chunks(0, pieces), make_chunk({}, "tool_calls")]

    events = feed_all(chunks)

    (done,) = of_type(events, ToolCallDone)
    assert done.arguments == json.dumps(value)
    assert json.loads(done.arguments) == value
    assert "".join(d.arguments_delta for d in of_type(events, ToolCallDelta)) == done.arguments


@EXAMPLES
@given(split_json_dict(), split_json_dict(), st.data())
def test_chunk_mapper_reassembles_two_interleaved_parallel_tool_calls(
    first: tuple[dict[str, Any], list[str]],
    second: tuple[dict[str, Any], list[str]],
    data: st.DataObject,
) -> None:
    queues = [tool_chunks(0, first[1]), tool_chunks(1, second[1])]
    order = data.draw(st.permutations([0] * len(queues[0]) + [1] * len(queues[1])))
    chunks = [queues[i].pop(0) for i in order]

    events = feed_all([*chunks, make_chunk({}, "tool_calls")])

    done = of_type(events, ToolCallDone)
    assert [(d.index, d.id, d.name) for d in done] == [
        (0, "call_0", "tool_0"),
        (1, "call_1", "tool_1"),
    ]
    assert json.loads(done[0].arguments) == first[0]
    assert json.loads(done[1].arguments) == second[0]


def test_chunk_mapper_usage_chunk_without_choices_yields_usage_event() -> None:
    mapper = ChunkMapper(JOB_ID, 3)

    events = mapper.feed(make_usage_chunk(7, 11))

    assert events == [
        Usage(job_id=JOB_ID, attempt=3, prompt_tokens=7, completion_tokens=11, total_tokens=18)
    ]
    assert mapper.usage == UsageInfo(prompt_tokens=7, completion_tokens=11, total_tokens=18)


def test_chunk_mapper_usage_with_zero_total_falls_back_to_the_sum() -> None:
    (usage,) = feed_all([make_usage_chunk(2, 3, total=0)], finish=False)

    assert isinstance(usage, Usage)
    assert usage.total_tokens == 5


def test_chunk_mapper_ignores_usage_without_total() -> None:
    chunk = make_usage_chunk(2, 3)
    chunk["usage"]["total_tokens"] = None

    assert feed_all([chunk], finish=False) == []


def test_chunk_mapper_finish_closes_calls_never_closed_by_finish_reason() -> None:
    mapper = ChunkMapper(JOB_ID, 1)
    for chunk in tool_chunks(0, ['{"a"', ":1}"]):
        mapper.feed(chunk)

    closing = mapper.finish()

    assert [(e.type, e.arguments) for e in of_type(closing, ToolCallDone)] == [
        ("tool_call.done", '{"a":1}')
    ]
    assert len(closing) == 1
    assert mapper.finish() == []


def test_chunk_mapper_never_emits_done_twice() -> None:
    mapper = ChunkMapper(JOB_ID, 1)
    for chunk in tool_chunks(0, ["{}"]):
        mapper.feed(chunk)

    at_finish_reason = mapper.feed(make_chunk({}, "tool_calls"))
    again = mapper.feed(make_chunk({}, "tool_calls"))
    at_end = mapper.finish()

    assert len(of_type(at_finish_reason, ToolCallDone)) == 1
    assert of_type(again, ToolCallDone) == []
    assert at_end == []


def test_chunk_mapper_finish_without_tool_calls_emits_nothing() -> None:
    mapper = ChunkMapper(JOB_ID, 1)
    mapper.feed(make_chunk({"content": "hi"}))

    assert mapper.finish() == []


# ---------------------------------------------------------------- against fake_llm plans


def _fold(events: list[_Event]) -> tuple[str, str, list[ToolCallDone]]:
    content = "".join(e.text for e in of_type(events, ContentDelta))
    reasoning = "".join(e.text for e in of_type(events, ReasoningDelta))
    return content, reasoning, of_type(events, ToolCallDone)


def make_body(model: str = "fake-gpt", prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


@pytest.mark.parametrize(
    "body",
    [
        make_body(),
        make_body(prompt="[fake chunks=5]"),
        make_body(model="fake-reasoner"),
        make_body(model="openai/reasoner-x", prompt="[fake chunks=3 reasoning=2]"),
        make_body(tools=[WEATHER_TOOL]),
        make_body(prompt="[fake chunks=2]", tools=[WEATHER_TOOL]),
    ],
    ids=["plain", "chunks", "reasoner", "reasoner-directives", "tools", "tools-and-content"],
)
def test_chunk_mapper_over_fake_llm_plan_reproduces_the_plan(body: dict[str, Any]) -> None:
    p = fake_llm.plan(body)
    mapper = ChunkMapper(JOB_ID, 1)
    events: list[_Event] = []

    for chunk in [*fake_llm.chunks(p, "id"), fake_llm.usage_chunk(p, "id")]:
        events += mapper.feed(chunk)
    events += mapper.finish()

    content, reasoning, done = _fold(events)
    assert content == p.text
    assert reasoning == p.reasoning_text
    assert mapper.finish_reason == p.finish_reason
    assert mapper.usage == UsageInfo(
        prompt_tokens=p.prompt_tokens,
        completion_tokens=p.completion_tokens,
        total_tokens=p.prompt_tokens + p.completion_tokens,
    )
    if p.tool_call is None:
        assert done == []
    else:
        assert [(d.id, d.name, d.arguments) for d in done] == [
            (p.tool_call.id, p.tool_call.name, p.tool_call.arguments)
        ]


def test_fake_llm_plans_used_above_cover_reasoning_and_tools() -> None:
    reasoner = fake_llm.plan(make_body(model="fake-reasoner"))
    with_tools = fake_llm.plan(make_body(tools=[WEATHER_TOOL]))

    assert reasoner.reasoning_text != ""
    assert reasoner.text != ""
    assert with_tools.tool_call is not None
    assert with_tools.tool_call.name == "get_weather"
