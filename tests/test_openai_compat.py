"""The OpenAI-compatible surface: the pure event → chunk mapping, then the official openai SDK
against the running API (POST /v1/chat/completions, GET /v1/jobs/{id}/events?format=openai)."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from pydantic import ValidationError

from tokenspool.events import (
    ContentDelta,
    ErrorInfo,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobQueued,
    JobRetrying,
    JobStarted,
    ReasoningDelta,
    ToolCallDelta,
    ToolCallDone,
    Usage,
    UsageInfo,
    from_entry,
)
from tokenspool.jobs import JobStatus, JobView, Output, ToolCall
from tokenspool.openai_format import (
    DONE,
    ChatCompletionRequest,
    ChunkFormatter,
    Frame,
    completion,
    validation_error_body,
)
from tokenspool.stack import Stack

from .helpers import expected, parse_sse

JOB = "job_test"
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
MESSAGES = [{"role": "user", "content": "hi"}]

# --- the mapping, with hand-built events -------------------------------------------------------

_ids = itertools.count(1)


def ev(cls: type[Any], attempt: int = 1, **fields: Any) -> Event:
    event: Event = cls(job_id=JOB, attempt=attempt, event_id=f"1000-{next(_ids)}", **fields)
    return event


def run(formatter: ChunkFormatter, events: list[Event]) -> list[Frame]:
    return [frame for event in events for frame in formatter.feed(event)]


def deltas(frames: list[Frame]) -> list[dict[str, Any]]:
    return [f.json()["choices"][0]["delta"] for f in frames if f.json() and f.json()["choices"]]


def start_events() -> list[Event]:
    return [ev(JobQueued, attempt=0, model="m"), ev(JobStarted, worker="w:1")]


def test_formatter_maps_a_text_job_to_role_content_finish_and_done() -> None:
    events = [
        *start_events(),
        ev(ContentDelta, text="Hello "),
        ev(ContentDelta, text="world"),
        ev(Usage, prompt_tokens=3, completion_tokens=2, total_tokens=5),
        ev(JobCompleted, finish_reason="stop"),
    ]

    frames = run(ChunkFormatter(JOB, "m", 1700000000), events)

    chunks = [f.json() for f in frames[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello "},
        {"content": "world"},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(
        c["id"] == f"chatcmpl-{JOB}"
        and c["object"] == "chat.completion.chunk"
        and c["model"] == "m"
        and c["created"] == 1700000000
        for c in chunks
    )
    assert "usage" not in chunks[-1]
    assert frames[-1].data == DONE and frames[-1].id == events[-1].event_id
    assert [f.id for f in frames[1:3]] == [events[2].event_id, events[3].event_id]


def test_formatter_sends_the_usage_chunk_last_when_asked() -> None:
    events = [
        *start_events(),
        ev(ContentDelta, text="x"),
        ev(Usage, prompt_tokens=3, completion_tokens=2, total_tokens=5),
        ev(JobCompleted, finish_reason="length"),
    ]

    frames = run(ChunkFormatter(JOB, "m", 0, include_usage=True), events)

    usage_chunk = frames[-2].json()
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert frames[-3].json()["choices"][0]["finish_reason"] == "length"
    assert frames[-3].json()["usage"] is None and frames[-1].data == DONE


def test_formatter_maps_reasoning_and_tool_call_deltas_with_the_header_once() -> None:
    events = [
        *start_events(),
        ev(ReasoningDelta, text="think"),
        ev(ToolCallDelta, index=0, id="call_1", name="get_weather", arguments_delta='{"ci'),
        ev(ToolCallDelta, index=0, arguments_delta='ty": "Paris"}'),
        ev(ToolCallDone, index=0, id="call_1", name="get_weather", arguments='{"city": "Paris"}'),
        ev(JobCompleted, finish_reason="tool_calls"),
    ]

    frames = run(ChunkFormatter(JOB, "m", 0), events)

    got = deltas(frames)
    assert got[1] == {"reasoning_content": "think"}
    assert got[2] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"ci'},
            }
        ]
    }
    assert got[3] == {"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}
    assert got[4] == {}  # tool_call.done added nothing: the deltas had it all
    assert frames[-2].json()["choices"][0]["finish_reason"] == "tool_calls"


def test_formatter_sends_what_tool_call_done_adds_to_the_deltas() -> None:
    events = [
        *start_events(),
        ev(ToolCallDelta, index=1, id="call_9", arguments_delta="{"),
        ev(ToolCallDone, index=1, id="call_9", name="lookup", arguments='{"q": 1}'),
    ]

    got = deltas(run(ChunkFormatter(JOB, "m", 0), events))

    assert got[-1] == {
        "tool_calls": [{"index": 1, "function": {"name": "lookup", "arguments": '"q": 1}'}}]
    }


@pytest.mark.parametrize("include_usage", [False, True])
def test_text_deltas_straight_from_stream_entries_are_the_bytes_the_events_give(
    include_usage: bool,
) -> None:
    """The relay formats text deltas from the stored entry (``text_frame``), every other entry
    through its event: byte for byte what feeding every event gives, across the role chunk,
    odd texts, reasoning, a tool call, a retry before any output and a second attempt."""
    texts = ["Hello", "", 'say "hi"\n', "back\\slash\t", "héllo 世界 🎉", "\u2028 </script>"]
    events: list[Event] = [
        ev(JobQueued, attempt=0, model="m"),
        ev(JobStarted, worker="w:1"),
        ev(JobRetrying, next_attempt=2, reason="worker lost"),  # before any output
        ev(JobStarted, attempt=2, worker="w:2"),
        ev(ContentDelta, attempt=1, text="superseded"),  # a late write of attempt 1
        *(ev(ContentDelta, attempt=2, text=t) for t in texts),
        ev(ReasoningDelta, attempt=2, text="thinking"),
        ev(ToolCallDelta, attempt=2, index=0, id="call_1", name="f", arguments_delta='{"a":'),
        ev(ContentDelta, attempt=2, text="after the tool"),
        ev(Usage, attempt=2, prompt_tokens=3, completion_tokens=2, total_tokens=5),
        ev(JobCompleted, attempt=2, finish_reason="stop"),
        ev(ContentDelta, attempt=2, text="after the end"),
    ]
    entries = []
    for event in events:
        stored = event.to_fields()
        fields = {k.encode(): v.encode() for k, v in stored.items()}
        entries.append((str(event.event_id).encode(), {b"n": b"1", **fields}))

    direct = ChunkFormatter(JOB, "m", 1700000000, include_usage=include_usage)
    through_events = ChunkFormatter(JOB, "m", 1700000000, include_usage=include_usage)
    fast = 0
    got, want = [], []
    for entry_id, fields in entries:
        frame = direct.text_frame(entry_id, fields)
        if frame is not None:
            fast += 1
            got.append(frame)
        else:
            got.extend(f.encode() for f in direct.feed(from_entry(JOB, entry_id, fields)))
        event = from_entry(JOB, entry_id, fields)
        want.extend(f.encode() for f in through_events.feed(event))

    assert got == want
    assert (direct.role_sent, direct.output_sent, direct.done, direct.attempt) == (
        through_events.role_sent,
        through_events.output_sent,
        through_events.done,
        through_events.attempt,
    )
    # job.queued brought the role chunk; the superseded write and the one after the end went
    # through their events (and gave nothing); every other text delta came from its entry
    assert fast == len(texts) + 2


def test_the_bench_client_tells_content_chunks_from_the_other_frames() -> None:
    """bench/sse.py reads OpenAI-format streams by their compact JSON: a content chunk, the
    end, an error, or neither (role, finish and usage chunks)."""
    from bench.sse import openai_type

    events = [
        *start_events(),
        ev(ContentDelta, text="Hello "),
        ev(ContentDelta, text='"quoted" {"content":1}'),
        ev(Usage, prompt_tokens=3, completion_tokens=2, total_tokens=5),
        ev(JobCompleted, finish_reason="stop"),
    ]
    frames = run(ChunkFormatter(JOB, "m", 0, include_usage=True), events)
    kinds = [openai_type(f.data.encode()) for f in frames if f.data is not None]
    assert kinds == ["", "content.delta", "content.delta", "", "", "job.completed"]

    failed = ev(JobFailed, error=ErrorInfo(type="RateLimitError", message="slow down"))
    frames = run(ChunkFormatter(JOB, "m", 0), [*start_events(), failed])
    kinds = [openai_type(f.data.encode()) for f in frames if f.data is not None]
    assert kinds == ["", "job.failed"]  # the role chunk, then the error object (no [DONE])


def test_formatter_ends_with_an_error_object_when_the_job_fails() -> None:
    formatter = ChunkFormatter(JOB, "m", 0)
    failed = ev(JobFailed, error=ErrorInfo(type="RateLimitError", message="slow down"))

    frames = run(formatter, [*start_events(), ev(ContentDelta, text="a"), failed])
    later = formatter.feed(ev(ContentDelta, text="b"))

    error = frames[-1].json()["error"]
    assert error["type"] == "RateLimitError" and error["code"] == "job_failed"
    assert "slow down" in error["message"] and JOB in error["message"]
    assert frames[-1].id == failed.event_id
    assert formatter.done and later == []


def test_formatter_ends_with_an_error_object_when_the_job_is_cancelled() -> None:
    frames = run(ChunkFormatter(JOB, "m", 0), [*start_events(), ev(JobCancelled, reason="bye")])

    assert frames[-1].json()["error"]["code"] == "job_cancelled"
    assert "bye" in frames[-1].json()["error"]["message"]


def test_formatter_continues_with_a_comment_when_a_retry_comes_before_any_output() -> None:
    events = [
        *start_events(),
        ev(JobRetrying, next_attempt=2, reason="RateLimitError before output: 429"),
        ev(JobStarted, attempt=2, worker="w:2"),
        ev(ContentDelta, attempt=2, text="fresh"),
        ev(JobCompleted, attempt=2, finish_reason="stop"),
    ]

    frames = run(ChunkFormatter(JOB, "m", 0), events)

    comments = [f for f in frames if f.comment is not None]
    assert len(comments) == 1 and "attempt 2" in (comments[0].comment or "")
    assert [d.get("content") for d in deltas(frames)] == ["", "fresh", None]
    assert frames[-1].data == DONE


def test_formatter_ends_with_a_tokenspool_retry_error_once_output_was_sent() -> None:
    formatter = ChunkFormatter(JOB, "m", 0)
    events = [
        *start_events(),
        ev(ContentDelta, text="stale"),
        ev(JobRetrying, next_attempt=2, reason="APIConnectionError after output began: drop"),
        ev(JobStarted, attempt=2, worker="w:2"),
        ev(ContentDelta, attempt=2, text="fresh"),
    ]

    frames = run(formatter, events)

    error = frames[-1].json()["error"]
    assert error["type"] == "tokenspool_retry"
    assert f"GET /v1/jobs/{JOB}" in error["message"]
    assert formatter.done and "fresh" not in json.dumps([f.json() for f in frames])


def test_formatter_ignores_events_of_a_superseded_attempt() -> None:
    formatter = ChunkFormatter(JOB, "m", 0)
    run(
        formatter,
        [
            *start_events(),
            ev(JobRetrying, next_attempt=2, reason="lost"),
            ev(JobStarted, attempt=2, worker="w:2"),
        ],
    )

    assert formatter.feed(ev(ContentDelta, attempt=1, text="late")) == []


def test_frames_encode_data_with_the_event_id_and_comments_as_one_line() -> None:
    data = Frame(data='{"a":1}', id="5-0").encode()
    comment = Frame(comment="ping\nagain").encode()

    assert data == b'id: 5-0\r\ndata: {"a":1}\r\n\r\n'
    assert comment == b": ping again\r\n"  # no blank line: see Frame.encode


def test_request_accepts_openai_options_and_builds_the_job() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": MESSAGES,
            "stream": True,
            "n": 1,
            "user": "u-1",
            "stream_options": {"include_usage": True},
            "max_completion_tokens": 7,
        }
    )

    job = body.job_request()

    assert body.include_usage
    assert job.max_tokens == 7 and job.metadata == {"user": "u-1"}
    assert "stream" not in job.model_dump()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 9}, "temperature"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"stream_options": {"include_usage": True}}, None),
    ],
)
def test_request_validation_error_names_the_field(extra: dict[str, Any], param: str | None) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **extra})

    error = validation_error_body(info.value)["error"]

    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert (param or "stream_options") in error["message"]


def test_completion_carries_content_reasoning_tool_calls_and_usage() -> None:
    view = JobView(
        id=JOB,
        status=JobStatus.completed,
        model="m",
        attempt=1,
        created_at=1.0,
        output=Output(
            content="",
            reasoning="hmm",
            finish_reason="tool_calls",
            tool_calls=[ToolCall(index=0, id="c1", name="f", arguments="{}")],
        ),
        usage=UsageInfo(prompt_tokens=1, completion_tokens=2, total_tokens=3),
        events_url="/x",
    )

    body = completion(view, created=42)

    message = body["choices"][0]["message"]
    assert body["object"] == "chat.completion" and body["id"] == f"chatcmpl-{JOB}"
    assert message["content"] is None and message["reasoning_content"] == "hmm"
    assert message["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


# --- the official SDK against the running API ---------------------------------------------------


@pytest.fixture
async def sdk(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=stack.api_url + "/v1", api_key="x", max_retries=0) as client:
        yield client


def user(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


async def test_sdk_stream_text_equals_the_provider_text(sdk: AsyncOpenAI) -> None:
    prompt = "openai stream [fake chunks=20]"
    want = expected("fake-gpt", prompt)

    raw = await sdk.chat.completions.with_raw_response.create(
        model="fake-gpt", messages=user(prompt), stream=True
    )
    chunks = [chunk async for chunk in raw.parse()]

    job_id = raw.headers["x-tokenspool-job-id"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {f"chatcmpl-{job_id}"}
    assert {c.model for c in chunks} == {"fake-gpt"}


async def test_sdk_stream_carries_reasoning_content(sdk: AsyncOpenAI) -> None:
    prompt = "openai reasoning [fake chunks=5 reasoning=4]"
    want = expected("fake-reasoner", prompt)

    stream = await sdk.chat.completions.create(
        model="fake-reasoner", messages=user(prompt), stream=True
    )
    chunks = [chunk async for chunk in stream]

    reasoning = [(c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in chunks]
    assert "".join(r or "" for r in reasoning) == want.reasoning_text
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text


async def test_sdk_stream_tool_call_arguments_split_mid_json_reassemble(sdk: AsyncOpenAI) -> None:
    prompt = "openai weather in Paris?"
    want = expected("fake-gpt", prompt, tools=TOOLS)
    assert want.tool_call is not None

    stream = await sdk.chat.completions.create(
        model="fake-gpt",
        messages=user(prompt),
        tools=TOOLS,
        stream=True,
    )
    calls = [tc async for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []]

    assert len(calls) == len(want.tool_call.pieces) > 2
    assert calls[0].id == "call_fake_0" and calls[0].type == "function"
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    assert all(c.id is None and c.function and c.function.name is None for c in calls[1:])
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    assert arguments == want.tool_call.arguments and json.loads(arguments)["city"] == "Paris"


async def test_sdk_stream_ends_with_the_usage_chunk_when_include_usage(sdk: AsyncOpenAI) -> None:
    prompt = "openai usage [fake chunks=6]"
    want = expected("fake-gpt", prompt)

    stream = await sdk.chat.completions.create(
        model="fake-gpt",
        messages=user(prompt),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == want.completion_tokens
    assert last.usage.total_tokens == want.prompt_tokens + want.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


async def test_sdk_non_streaming_completion_has_message_finish_reason_and_usage(
    sdk: AsyncOpenAI,
) -> None:
    prompt = "openai whole [fake chunks=8 reasoning=3]"
    want = expected("fake-reasoner", prompt)

    raw = await sdk.chat.completions.with_raw_response.create(
        model="fake-reasoner", messages=user(prompt)
    )
    answer = raw.parse()

    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == "fake-reasoner"
    assert answer.id == "chatcmpl-" + raw.headers["x-tokenspool-job-id"]
    assert choice.message.content == want.text and choice.finish_reason == "stop"
    assert (choice.message.model_extra or {})["reasoning_content"] == want.reasoning_text
    assert answer.usage is not None and answer.usage.completion_tokens == want.completion_tokens


async def test_sdk_non_streaming_tool_call_is_returned_whole(sdk: AsyncOpenAI) -> None:
    prompt = "openai whole tool call"
    want = expected("fake-gpt", prompt, tools=TOOLS)
    assert want.tool_call is not None

    answer = await sdk.chat.completions.create(
        model="fake-gpt",
        messages=user(prompt),
        tools=TOOLS,
    )

    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls" and message.tool_calls
    call = message.tool_calls[0]
    assert call.id == "call_fake_0" and call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == want.tool_call.arguments


async def test_sdk_unknown_model_raises_not_found(sdk: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await sdk.chat.completions.create(model="gpt-nope", messages=user("x"), stream=True)

    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert "gpt-nope" in info.value.message and "fake-gpt" in info.value.message


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 9}, "temperature"),
        ({"n": 2}, "n"),
        ({"extra_body": {"frequency_penalty": 0.5}}, "frequency_penalty"),
        ({"max_tokens": 10_000_000}, "max_tokens"),
    ],
)
async def test_sdk_invalid_parameter_raises_bad_request_naming_it(
    sdk: AsyncOpenAI, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model="fake-gpt", messages=user("x"), **params)

    assert info.value.param == param and param in info.value.message


async def test_invalid_json_body_is_400_in_openai_shape(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_job_id_header_names_the_job_behind_the_completion(
    sdk: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    prompt = "openai header [fake chunks=3]"

    raw = await sdk.chat.completions.with_raw_response.create(
        model="fake-gpt", messages=user(prompt)
    )

    job_id = raw.headers["x-tokenspool-job-id"]
    view = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert view["status"] == "completed" and view["model"] == "fake-gpt"
    assert view["output"]["content"] == raw.parse().choices[0].message.content


async def test_sdk_stream_ends_with_an_error_when_the_job_fails(sdk: AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="fake-gpt", messages=user("openai fail [fake status=400]"), stream=True
    )

    with pytest.raises(openai.APIError) as info:
        async for _chunk in stream:
            pass

    assert info.value.code == "job_failed" and info.value.type == "BadRequestError"


async def test_sdk_stream_goes_on_after_a_retry_that_came_before_any_output(
    sdk: AsyncOpenAI,
) -> None:
    prompt = "openai 500 once [fake status=500 fail_times=1 chunks=6]"
    want = expected("fake-gpt", prompt)

    stream = await sdk.chat.completions.create(model="fake-gpt", messages=user(prompt), stream=True)
    chunks = [chunk async for chunk in stream]

    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_sdk_stream_ends_with_tokenspool_retry_error_when_output_was_superseded(
    sdk: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    # the pause between chunks lets the worker write the first deltas before the drop
    prompt = "openai drop once [fake drop_after=4 fail_times=1 chunks=12 delay_ms=20]"
    want = expected("fake-gpt", prompt)
    raw = await sdk.chat.completions.with_raw_response.create(
        model="fake-gpt", messages=user(prompt), stream=True
    )
    job_id = raw.headers["x-tokenspool-job-id"]
    content = []

    with pytest.raises(openai.APIError) as info:
        async for chunk in raw.parse():
            content.append(chunk.choices[0].delta.content or "")

    assert info.value.type == "tokenspool_retry"
    assert f"GET /v1/jobs/{job_id}" in info.value.message
    assert want.text.startswith("".join(content)) and "".join(content)
    response = await http.get(f"/v1/jobs/{job_id}/events")  # follows the job to its end
    assert response.status_code == 200
    assert (await http.get(f"/v1/jobs/{job_id}")).json()["output"]["content"] == want.text


async def test_repeated_idempotency_key_answers_from_the_same_job(sdk: AsyncOpenAI) -> None:
    headers = {"Idempotency-Key": f"openai-{uuid.uuid4().hex}"}
    prompt = "openai idempotent [fake chunks=4]"

    first = await sdk.chat.completions.with_raw_response.create(
        model="fake-gpt", messages=user(prompt), extra_headers=headers
    )
    again = await sdk.chat.completions.with_raw_response.create(
        model="fake-gpt", messages=user(prompt), extra_headers=headers
    )

    assert first.headers["x-tokenspool-job-id"] == again.headers["x-tokenspool-job-id"]
    assert first.parse().choices[0].message.content == again.parse().choices[0].message.content


async def test_sdk_models_list_names_the_configured_models(sdk: AsyncOpenAI) -> None:
    models = [model async for model in sdk.models.list()]

    assert {m.id for m in models} == {"fake-gpt", "fake-reasoner"}
    assert all(m.object == "model" and m.owned_by == "tokenspool" for m in models)


class _PingTap(httpx.AsyncHTTPTransport):
    """A real transport that also notes when a heartbeat arrives after an ``id:`` line."""

    def __init__(self) -> None:
        super().__init__()
        self.pinged = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        response.stream = _Tapped(response.stream, self.pinged)
        return response


class _Tapped(httpx.AsyncByteStream):
    def __init__(self, inner: Any, pinged: asyncio.Event) -> None:
        self.inner, self.pinged, self.seen_id = inner, pinged, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.seen_id = self.seen_id or b"id: " in chunk
            if self.seen_id and b": ping" in chunk:
                self.pinged.set()
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_heartbeats_between_chunks_do_not_break_the_sdk_stream(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    tap = _PingTap()
    async with httpx.AsyncClient(transport=tap, timeout=30) as transport_client:
        sdk = AsyncOpenAI(
            base_url=stack.api_url + "/v1", api_key="x", max_retries=0, http_client=transport_client
        )
        raw = await sdk.chat.completions.with_raw_response.create(
            model="fake-gpt",
            messages=user("openai idle [fake chunks=10 stall_after=3]"),
            stream=True,
        )
        job_id = raw.headers["x-tokenspool-job-id"]
        content = []

        async def cancel_after_a_heartbeat() -> None:
            await asyncio.wait_for(tap.pinged.wait(), 20)
            assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 202

        canceller = asyncio.create_task(cancel_after_a_heartbeat())
        with pytest.raises(openai.APIError) as info:
            async for chunk in raw.parse():
                content.append(chunk.choices[0].delta.content or "")
        await canceller

    assert info.value.code == "job_cancelled"  # not a JSON error on an empty heartbeat event
    assert len([c for c in content if c]) == 2  # the fake's 3 chunks: role + 2 words


# --- resuming the OpenAI-format stream ---------------------------------------------------------


def frame_content(data: str) -> str:
    if data == DONE:
        return ""
    choices = json.loads(data).get("choices") or [{}]
    return str(choices[0].get("delta", {}).get("content") or "")


async def test_openai_stream_resumes_from_last_event_id_with_exactly_the_rest(
    http: httpx.AsyncClient,
) -> None:
    prompt = "openai resume [fake chunks=40 delay_ms=5]"
    want = expected("fake-gpt", prompt)
    body = {"model": "fake-gpt", "messages": user(prompt), "stream": True}
    first: list[dict[str, str]] = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        job_id = response.headers["x-tokenspool-job-id"]
        block: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                block[name] = value
                continue
            first.append(block)
            block = {}
            if sum(bool(frame_content(f["data"])) for f in first) == 10:
                break  # drop the connection mid-stream

    response = await http.get(
        f"/v1/jobs/{job_id}/events",
        params={"format": "openai"},
        headers={"Last-Event-ID": first[-1]["id"]},
    )
    rest = parse_sse(response.text)

    assert response.status_code == 200 and response.headers["x-tokenspool-job-id"] == job_id
    text = "".join(frame_content(f["data"]) for f in first + rest)
    assert text == want.text
    assert not {f["id"] for f in first} & {f["id"] for f in rest}
    assert all(
        json.loads(f["data"])["choices"][0]["delta"].get("role") is None
        for f in rest
        if f["data"] != DONE
    )
    assert rest[-1]["data"] == DONE


async def test_openai_stream_of_a_finished_job_replays_whole_with_usage_on_request(
    http: httpx.AsyncClient, sdk: AsyncOpenAI
) -> None:
    prompt = "openai replay [fake chunks=5]"
    want = expected("fake-gpt", prompt)
    answer = await sdk.chat.completions.with_raw_response.create(
        model="fake-gpt", messages=user(prompt)
    )
    job_id = answer.headers["x-tokenspool-job-id"]

    response = await http.get(
        f"/v1/jobs/{job_id}/events", params={"format": "openai", "include_usage": "true"}
    )
    frames = parse_sse(response.text)

    assert "".join(frame_content(f["data"]) for f in frames) == want.text
    assert json.loads(frames[0]["data"])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(frames[-2]["data"])["usage"]["completion_tokens"] == want.completion_tokens
    assert frames[-1]["data"] == DONE

    after_end = await http.get(
        f"/v1/jobs/{job_id}/events", params={"format": "openai", "after": frames[-1]["id"]}
    )
    assert after_end.status_code == 200 and parse_sse(after_end.text) == []


async def test_openai_stream_refuses_bad_offsets_and_unknown_jobs_in_openai_shape(
    http: httpx.AsyncClient,
) -> None:
    bad = await http.get(
        "/v1/jobs/job_missing/events?format=openai", headers={"Last-Event-ID": "nope"}
    )
    missing = await http.get("/v1/jobs/job_missing/events?format=openai")

    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"
    assert missing.status_code == 404 and "job_missing" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    ("model", "prompt", "tools"),
    [
        ("fake-reasoner", "openai live [fake chunks=30 reasoning=10 delay_ms=10]", None),
        ("fake-gpt", "openai live weather in Paris? [fake delay_ms=10]", TOOLS),
    ],
)
async def test_openai_stream_read_live_is_frame_for_frame_its_replay(
    http: httpx.AsyncClient, model: str, prompt: str, tools: Any
) -> None:
    """Read while the job runs, most events reach the client from the stream hub's
    notifications, written without waking the stream's task; the formatter's state (role,
    tool-call headers) must follow them exactly as it follows a replay read in batches."""
    body: dict[str, Any] = {"model": model, "messages": user(prompt)}
    if tools:
        body["tools"] = tools
    before = await pushed_total(http)
    job = await http.post("/v1/jobs", json=body)
    job_id = job.json()["id"]
    params = {"format": "openai", "include_usage": "true"}

    live = await http.get(f"/v1/jobs/{job_id}/events", params=params)
    pushed = await pushed_total(http) - before
    replay = await http.get(f"/v1/jobs/{job_id}/events", params=params)

    assert pushed >= 1  # the live read relayed some events by push
    assert parse_sse(live.text) == parse_sse(replay.text)
    assert parse_sse(live.text)[-1]["data"] == DONE


async def pushed_total(http: httpx.AsyncClient) -> float:
    """The API's count of events its stream hub pushed (``tokenspool_hub_pushed_total``)."""
    text = (await http.get("/metrics")).text
    [line] = [line for line in text.splitlines() if line.startswith("tokenspool_hub_pushed_total")]
    return float(line.split()[-1])
