"""The event JSON and SSE bytes built straight from stream entries are byte-identical to what
the routes sent before: pydantic's ``model_dump_json()`` in sse-starlette's ``ServerSentEvent``."""

from __future__ import annotations

from typing import Any

import pytest
from sse_starlette import ServerSentEvent

from api.streams import sse_frames
from tokenspool import events as ev

from .test_events import EVENT_CLASSES, JOB_ID, make_event, redis_entry

ENTRY_ID = b"1700000000000-5"


def variants(cls: type[ev._Event]) -> list[ev._Event]:
    """The factory's event, plus versions with awkward values: control characters, quotes,
    backslashes, line separators and astral characters in strings, unset optional fields,
    floats (formatted differently by pydantic and json.dumps), attempt 0 and big ints."""
    out = [make_event(cls), make_event(cls, attempt=0), make_event(cls, attempt=123456)]
    awkward = 'a\x00\x1f\x7f\t\r\n\\"\u2028\u2029é😀</script>'
    usage = ev.UsageInfo(prompt_tokens=2**40, total_tokens=1, cost_usd=3.5e-05)
    extra: dict[type[ev._Event], list[dict[str, Any]]] = {
        ev.JobQueued: [{"model": awkward}],
        ev.JobStarted: [{"worker": awkward}],
        ev.JobRetrying: [{"next_attempt": 2, "reason": awkward}],
        ev.ContentDelta: [{"text": awkward}, {"text": ""}],
        ev.ReasoningDelta: [{"text": awkward}],
        ev.ToolCallDelta: [{"index": 0}, {"index": 3, "arguments_delta": awkward}],
        ev.ToolCallDone: [{"index": 0, "arguments": awkward}],
        ev.ObjectDelta: [
            {"value": {"t": 0.1, "big": 1e16, "small": 3.5e-05, "n": [1, 2.0], "s": awkward}},
            {"value": None},
            {"value": [awkward, True, 10**30]},
        ],
        ev.Usage: [{}, {"prompt_tokens": 2**53 + 1}],
        ev.JobCompleted: [{}, {"usage": usage, "finish_reason": None}],
        ev.JobFailed: [{"error": ev.ErrorInfo(type=awkward, message=awkward)}],
        ev.JobCancelled: [{}, {"usage": usage}],
    }
    out += [cls(job_id=JOB_ID, attempt=1, **fields) for fields in extra[cls]]
    return out


CASES = [event for cls in EVENT_CLASSES for event in variants(cls)]


@pytest.mark.parametrize("event", CASES, ids=lambda e: e.type)
def test_entry_json_is_byte_identical_to_the_pydantic_encoding(event: ev._Event) -> None:
    fields = {b"n": b"7", **redis_entry(event)}

    fast = ev.entry_json(JOB_ID, ENTRY_ID, fields)

    assert fast == ev.from_entry(JOB_ID, ENTRY_ID, fields).model_dump_json().encode()


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_sse_frames_are_byte_identical_to_server_sent_events_of_the_model(
    cls: type[ev._Event],
) -> None:
    batch = [
        (f"1700000000000-{i}".encode(), {b"n": str(i + 1).encode(), **redis_entry(event)})
        for i, event in enumerate(variants(cls))
    ]

    frames = sse_frames(JOB_ID, batch)

    expected = b"".join(
        ServerSentEvent(
            id=entry_id.decode(),
            event=event.type,
            data=event.model_dump_json(),
        ).encode()
        for entry_id, fields in batch
        for event in [ev.from_entry(JOB_ID, entry_id, fields)]
    )
    assert frames == expected


def test_entry_json_falls_back_to_pydantic_for_an_attempt_to_fields_would_not_write() -> None:
    data = b'{"index":2,"id":null,"name":null,"arguments_delta":""}'
    odd = {b"t": b"tool_call.delta", b"a": b"01", b"d": data}

    fast = ev.entry_json(JOB_ID, ENTRY_ID, odd)

    assert fast == ev.from_entry(JOB_ID, ENTRY_ID, odd).model_dump_json().encode()
