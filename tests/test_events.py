"""The stream-entry and JSON forms of every event type round-trip exactly."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tokenspool import events as ev
from tokenspool import keys

JOB_ID = "job_test"
ENTRY_ID = "1700000000000-5"


def _event_classes() -> list[type[ev._Event]]:
    """Every member of the ``Event`` union, read from the union itself."""
    union = typing.get_args(ev.Event)[0]
    return list(typing.get_args(union))


def make_event(cls: type[ev._Event], *, attempt: int = 2, job_id: str = JOB_ID) -> ev._Event:
    """One instance of ``cls`` with every optional field filled (non-ASCII text included)."""
    usage = ev.UsageInfo(prompt_tokens=3, completion_tokens=5, total_tokens=8, estimated=True)
    fields: dict[type[ev._Event], dict[str, Any]] = {
        ev.JobQueued: {"model": "fake-gpt"},
        ev.JobStarted: {"worker": "worker-1"},
        ev.JobRetrying: {"next_attempt": attempt + 1, "reason": "worker lost"},
        ev.ContentDelta: {"text": 'héllo, "world"\n'},
        ev.ReasoningDelta: {"text": "thinking… 🤔"},
        ev.ObjectDelta: {"value": {"city": "Pa", "days": [1, 2], "ok": None}},
        ev.ToolCallDelta: {
            "index": 1,
            "id": "call_1",
            "name": "get_weather",
            "arguments_delta": '{"city": "Pa',
        },
        ev.ToolCallDone: {
            "index": 1,
            "id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        ev.Usage: {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        ev.JobCompleted: {"finish_reason": "stop", "usage": usage},
        ev.JobFailed: {"error": ev.ErrorInfo(type="ProviderError", message="rate limited")},
        ev.JobCancelled: {"reason": "user asked", "usage": usage},
    }
    return cls(job_id=job_id, attempt=attempt, **fields[cls])


def redis_entry(event: ev._Event) -> dict[bytes, bytes]:
    """The entry fields as redis-py returns them without ``decode_responses``."""
    return {k.encode(): v.encode() for k, v in event.to_fields().items()}


EVENT_CLASSES = _event_classes()


def test_factory_covers_every_event_type_of_the_union() -> None:
    assert len(EVENT_CLASSES) == 12
    for cls in EVENT_CLASSES:
        assert make_event(cls).type == cls.model_fields["type"].default


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_event_round_trips_through_stream_entry_with_bytes(cls: type[ev._Event]) -> None:
    event = make_event(cls)

    rebuilt = ev.from_entry(JOB_ID, ENTRY_ID.encode(), redis_entry(event))

    assert type(rebuilt) is cls
    assert rebuilt == event.model_copy(update={"event_id": ENTRY_ID})


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_event_round_trips_through_stream_entry_with_str(cls: type[ev._Event]) -> None:
    event = make_event(cls)

    rebuilt = ev.from_entry(JOB_ID, ENTRY_ID, event.to_fields())

    assert rebuilt == event.model_copy(update={"event_id": ENTRY_ID})


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_event_round_trips_through_json(cls: type[ev._Event]) -> None:
    event = make_event(cls).model_copy(update={"event_id": ENTRY_ID})

    rebuilt = ev.from_json(event.model_dump_json())

    assert type(rebuilt) is cls
    assert rebuilt == event


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_event_json_round_trips_from_bytes(cls: type[ev._Event]) -> None:
    event = make_event(cls)

    assert ev.from_json(event.model_dump_json().encode()) == event


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_stream_entry_holds_only_type_attempt_and_data_fields(cls: type[ev._Event]) -> None:
    event = make_event(cls)

    fields = event.to_fields()

    assert set(fields) == {keys.E_TYPE, keys.E_ATTEMPT, keys.E_DATA} == {"t", "a", "d"}
    assert fields["t"] == event.type
    assert fields["a"] == "2"
    data = json.loads(fields["d"])
    assert not {"type", "job_id", "attempt", "event_id", "terminal"} & set(data)


def test_stream_entry_data_is_compact_json_keeping_non_ascii() -> None:
    event = make_event(ev.ReasoningDelta)

    data = event.to_fields()["d"]

    assert data == '{"text":"thinking… 🤔"}'


def test_from_entry_defaults_missing_attempt_and_data() -> None:
    rebuilt = ev.from_entry(JOB_ID, b"1-0", {b"t": b"job.cancelled"})

    assert rebuilt == ev.JobCancelled(job_id=JOB_ID, attempt=0, event_id="1-0")


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
def test_terminal_flag_matches_terminal_types(cls: type[ev._Event]) -> None:
    event = make_event(cls)

    assert event.terminal is (event.type in ev.TERMINAL_TYPES)
    assert ev.is_terminal(event) is event.terminal  # type: ignore[arg-type]


def test_terminal_types_are_exactly_completed_failed_cancelled() -> None:
    terminal = {cls.model_fields["type"].default for cls in EVENT_CLASSES if cls.terminal}

    assert terminal == ev.TERMINAL_TYPES == {"job.completed", "job.failed", "job.cancelled"}


def test_unknown_type_is_rejected_from_json() -> None:
    raw = json.dumps({"type": "job.exploded", "job_id": JOB_ID, "attempt": 1})

    with pytest.raises(ValidationError):
        ev.from_json(raw)


def test_unknown_type_is_rejected_from_stream_entry() -> None:
    with pytest.raises(ValidationError):
        ev.from_entry(JOB_ID, b"1-0", {b"t": b"job.exploded", b"a": b"1", b"d": b"{}"})


def test_extra_field_is_rejected() -> None:
    fields = make_event(ev.ContentDelta).to_fields()
    fields["d"] = '{"text":"x","surprise":1}'

    with pytest.raises(ValidationError):
        ev.from_entry(JOB_ID, b"1-0", fields)


def test_negative_attempt_is_rejected() -> None:
    with pytest.raises(ValidationError):
        ev.ContentDelta(job_id=JOB_ID, attempt=-1, text="x")


def test_events_are_frozen() -> None:
    event = ev.ContentDelta(job_id=JOB_ID, attempt=1, text="x")

    with pytest.raises(ValidationError):
        # setattr: a plain assignment is a type error under the pydantic mypy plugin
        setattr(event, "text", "changed")  # noqa: B010


@given(text=st.text())
@pytest.mark.parametrize("cls", [ev.ContentDelta, ev.ReasoningDelta], ids=lambda c: c.__name__)
def test_text_delta_entry_built_directly_equals_the_generic_entry(
    cls: type[ev._Event], text: str
) -> None:
    event = cls(job_id=JOB_ID, attempt=3, text=text)

    assert event.to_fields() == ev._Event.to_fields(event)
