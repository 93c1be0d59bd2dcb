"""Properties of the Accumulator: the output is the fold of the current attempt's deltas."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenspool.accumulator import Accumulator
from tokenspool.events import (
    ContentDelta,
    Event,
    JobCancelled,
    JobCompleted,
    JobQueued,
    JobRetrying,
    JobStarted,
    ReasoningDelta,
    ToolCallDelta,
    ToolCallDone,
    Usage,
    UsageInfo,
)
from tokenspool.jobs import Output, ToolCall

JOB_ID = "job_acc"
EXAMPLES = settings(max_examples=100, deadline=None)

# ---------------------------------------------------------------- factories


def accumulate(events: Iterable[Event]) -> Accumulator:
    acc = Accumulator()
    for event in events:
        acc.add(event)
    return acc


def started(attempt: int) -> list[Event]:
    """The head of a stream up to the start of ``attempt`` (as the store writes it)."""
    out: list[Event] = [JobQueued(job_id=JOB_ID, attempt=0, model="fake-gpt")]
    out.append(JobStarted(job_id=JOB_ID, attempt=attempt, worker=f"w{attempt}"))
    return out


def content_events(pieces: list[str], attempt: int) -> list[Event]:
    return [ContentDelta(job_id=JOB_ID, attempt=attempt, text=p) for p in pieces]


def reasoning_events(pieces: list[str], attempt: int) -> list[Event]:
    return [ReasoningDelta(job_id=JOB_ID, attempt=attempt, text=p) for p in pieces]


def tool_events(index: int, pieces: list[str], attempt: int) -> list[Event]:
    """Deltas of one tool call as providers send them: id and name on the first only."""
    out: list[Event] = []
    for i, piece in enumerate(pieces):
        first = i == 0
        out.append(
            ToolCallDelta(
                job_id=JOB_ID,
                attempt=attempt,
                index=index,
                id=f"call_{index}" if first else None,
                name=f"tool_{index}" if first else None,
                arguments_delta=piece,
            )
        )
    return out


def usage_event(attempt: int, prompt: int, completion: int) -> Usage:
    return Usage(
        job_id=JOB_ID,
        attempt=attempt,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
    )


# ---------------------------------------------------------------- strategies


def split(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(min(c, len(text)) for c in cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def split_text(
    draw: st.DrawFn, text: st.SearchStrategy[str] | None = None
) -> tuple[str, list[str]]:
    """A text and the pieces it is cut into at random points (empty pieces included)."""
    value = draw(text if text is not None else st.text(max_size=60))
    cuts = draw(st.lists(st.integers(0, len(value)), max_size=12))
    return value, split(value, cuts)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
json_args = st.dictionaries(st.text(max_size=8), json_values, max_size=5).map(json.dumps)


@st.composite
def interleave(draw: st.DrawFn, streams: list[list[Event]]) -> list[Event]:
    """The events of ``streams`` merged in a random order that keeps each stream's own order."""
    queues = [list(s) for s in streams if s]
    out: list[Event] = []
    while queues:
        i = draw(st.integers(0, len(queues) - 1))
        out.append(queues[i].pop(0))
        if not queues[i]:
            queues.pop(i)
    return out


@st.composite
def attempt_output(draw: st.DrawFn, attempt: int) -> tuple[list[Event], Output]:
    """Random delta events of one attempt and the output they must fold to."""
    content, content_pieces = draw(split_text())
    reasoning, reasoning_pieces = draw(split_text())
    n_tools = draw(st.integers(0, 3))
    tool_streams: list[list[Event]] = []
    calls: list[ToolCall] = []
    for index in range(n_tools):
        arguments, pieces = draw(split_text(json_args))
        pieces = pieces or [""]
        tool_streams.append(tool_events(index, pieces, attempt))
        calls.append(
            ToolCall(index=index, id=f"call_{index}", name=f"tool_{index}", arguments=arguments)
        )
    events = draw(
        interleave(
            [
                content_events(content_pieces, attempt),
                reasoning_events(reasoning_pieces, attempt),
                *tool_streams,
            ]
        )
    )
    return events, Output(content=content, reasoning=reasoning, tool_calls=calls)


# ---------------------------------------------------------------- properties


@EXAMPLES
@given(split_text(), split_text())
def test_accumulator_content_and_reasoning_fold_to_the_joined_text(
    content: tuple[str, list[str]], reasoning: tuple[str, list[str]]
) -> None:
    text, text_pieces = content
    thought, thought_pieces = reasoning
    events = [
        *started(1),
        *reasoning_events(thought_pieces, 1),
        *content_events(text_pieces, 1),
    ]

    acc = accumulate(events)

    assert acc.content == text
    assert acc.output().content == text
    assert acc.output().reasoning == thought


@EXAMPLES
@given(st.data())
def test_accumulator_reassembles_tool_call_arguments_split_anywhere(data: st.DataObject) -> None:
    events, expected = data.draw(attempt_output(1))

    output = accumulate([*started(1), *events]).output()

    assert output == expected
    for call in output.tool_calls:
        json.loads(call.arguments)  # every reassembled argument string is the whole JSON


@EXAMPLES
@given(split_text(json_args))
def test_accumulator_keeps_tool_call_arguments_split_mid_json_with_empty_pieces(
    split_args: tuple[str, list[str]],
) -> None:
    arguments, pieces = split_args
    pieces = ["", *pieces, ""]

    output = accumulate([*started(1), *tool_events(0, pieces, 1)]).output()

    assert output.tool_calls == [ToolCall(index=0, id="call_0", name="tool_0", arguments=arguments)]


@EXAMPLES
@given(st.data())
def test_accumulator_discards_superseded_attempt_on_retrying(data: st.DataObject) -> None:
    old_events, _ = data.draw(attempt_output(1))
    new_events, expected = data.draw(attempt_output(2))
    events = [
        *started(1),
        *old_events,
        usage_event(1, 10, 20),
        JobRetrying(job_id=JOB_ID, attempt=1, next_attempt=2, reason="worker lost"),
        JobStarted(job_id=JOB_ID, attempt=2, worker="w2"),
        *new_events,
    ]

    acc = accumulate(events)

    assert acc.output() == expected
    assert acc.usage is None
    assert acc.attempt == 2


@EXAMPLES
@given(st.data())
def test_accumulator_ignores_stale_attempt_events_after_newer_start(data: st.DataObject) -> None:
    old_head, _ = data.draw(attempt_output(1))
    old_tail, _ = data.draw(attempt_output(1))
    new_events, expected = data.draw(attempt_output(2))
    stale_end: list[Event] = [
        usage_event(1, 99, 99),
        JobCompleted(job_id=JOB_ID, attempt=1, finish_reason="length"),
    ]
    after_start = data.draw(interleave([[*old_tail, *stale_end], new_events]))
    events = [
        *started(1),
        *old_head,
        JobStarted(job_id=JOB_ID, attempt=2, worker="w2"),
        *after_start,
    ]

    acc = accumulate(events)

    assert acc.output() == expected
    assert acc.usage is None
    assert acc.finish_reason is None


def test_accumulator_started_of_the_same_attempt_keeps_the_output() -> None:
    events = [
        JobRetrying(job_id=JOB_ID, attempt=1, next_attempt=2, reason="worker lost"),
        *content_events(["kept"], 2),
        JobStarted(job_id=JOB_ID, attempt=2, worker="w2"),
        *content_events([" too"], 2),
    ]

    assert accumulate(events).content == "kept too"


def test_accumulator_tool_call_done_replaces_the_deltas_with_the_full_arguments() -> None:
    events = [
        *started(1),
        *tool_events(0, ['{"a"', ": 1"], 1),
        ToolCallDone(
            job_id=JOB_ID, attempt=1, index=0, id="call_0", name="tool_0", arguments='{"a": 1}'
        ),
    ]

    output = accumulate(events).output()

    expected = ToolCall(index=0, id="call_0", name="tool_0", arguments='{"a": 1}')
    assert output.tool_calls == [expected]


@EXAMPLES
@given(
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.sampled_from(["stop", "length", "tool_calls", None]),
)
def test_accumulator_reflects_usage_and_finish_reason(
    prompt: int, completion: int, finish_reason: str | None
) -> None:
    events = [
        *started(1),
        *content_events(["done"], 1),
        usage_event(1, prompt, completion),
        JobCompleted(job_id=JOB_ID, attempt=1, finish_reason=finish_reason),
    ]

    acc = accumulate(events)

    assert acc.usage == UsageInfo(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    assert acc.finish_reason == finish_reason
    assert acc.output().finish_reason == finish_reason


def test_accumulator_takes_usage_from_completed_over_usage_event() -> None:
    final = UsageInfo(prompt_tokens=1, completion_tokens=2, total_tokens=3, estimated=True)
    events = [
        *started(1),
        usage_event(1, 50, 50),
        JobCompleted(job_id=JOB_ID, attempt=1, finish_reason="stop", usage=final),
    ]

    assert accumulate(events).usage == final


def test_accumulator_takes_usage_from_cancelled() -> None:
    final = UsageInfo(prompt_tokens=4, completion_tokens=1, total_tokens=5, estimated=True)
    events: list[Any] = [
        *started(1),
        *content_events(["part"], 1),
        JobCancelled(job_id=JOB_ID, attempt=1, usage=final),
    ]

    acc = accumulate(events)

    assert acc.usage == final
    assert acc.content == "part"
    assert acc.finish_reason is None
