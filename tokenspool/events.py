"""The typed events of a job's stream: the public wire contract (see docs/protocol.md).

In Redis an event is one stream entry with three fields: ``t`` (type), ``a`` (attempt) and
``d`` (the remaining fields as compact JSON). ``job_id`` comes from the key and ``event_id`` is
the entry id, so neither is repeated in every entry.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from . import keys


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    job_id: str
    attempt: int = Field(ge=0)
    event_id: str | None = Field(None, description="stream entry id: the event's offset")

    terminal: ClassVar[bool] = False

    def to_fields(self) -> dict[str, str]:
        """The stream entry fields for this event."""
        data = self.model_dump(mode="json", exclude={"type", "job_id", "attempt", "event_id"})
        return {
            keys.E_TYPE: self.type,
            keys.E_ATTEMPT: str(self.attempt),
            keys.E_DATA: _to_json(data),
        }


# compact JSON; one encoder for every event (json.dumps with options builds one per call)
_to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _TextDelta(_Event):
    """A streamed piece of text: one per provider chunk, so its entry is built directly."""

    text: str

    def to_fields(self) -> dict[str, str]:
        # the same bytes as _Event.to_fields (tests/test_events.py), without model_dump
        return {
            keys.E_TYPE: self.type,
            keys.E_ATTEMPT: str(self.attempt),
            keys.E_DATA: '{"text":' + _to_json(self.text) + "}",
        }


class UsageInfo(BaseModel):
    """Token counts of one job."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated: bool = Field(False, description="true when counted locally, not by the provider")
    cost_usd: float | None = Field(None, description="from litellm's pricing; null if unknown")


class ErrorInfo(BaseModel):
    """Why a job failed: the error class and its message."""

    model_config = ConfigDict(extra="forbid")

    type: str
    message: str


class JobQueued(_Event):
    type: Literal["job.queued"] = "job.queued"
    model: str


class JobStarted(_Event):
    type: Literal["job.started"] = "job.started"
    worker: str


class JobRetrying(_Event):
    type: Literal["job.retrying"] = "job.retrying"
    next_attempt: int
    reason: str


class ContentDelta(_TextDelta):
    type: Literal["content.delta"] = "content.delta"


class ReasoningDelta(_TextDelta):
    type: Literal["reasoning.delta"] = "reasoning.delta"


class ToolCallDelta(_Event):
    type: Literal["tool_call.delta"] = "tool_call.delta"
    index: int
    id: str | None = None
    name: str | None = None
    arguments_delta: str = ""


class ToolCallDone(_Event):
    type: Literal["tool_call.done"] = "tool_call.done"
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str


class ObjectDelta(_Event):
    """The partial parsed value of a structured (json_schema) answer so far."""

    type: Literal["object.delta"] = "object.delta"
    value: Any


class Usage(_Event):
    type: Literal["usage"] = "usage"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class JobCompleted(_Event):
    type: Literal["job.completed"] = "job.completed"
    finish_reason: str | None = None
    usage: UsageInfo | None = None
    terminal: ClassVar[bool] = True


class JobFailed(_Event):
    type: Literal["job.failed"] = "job.failed"
    error: ErrorInfo
    terminal: ClassVar[bool] = True


class JobCancelled(_Event):
    type: Literal["job.cancelled"] = "job.cancelled"
    reason: str = "cancelled by request"
    usage: UsageInfo | None = None
    terminal: ClassVar[bool] = True


Event = Annotated[
    JobQueued
    | JobStarted
    | JobRetrying
    | ContentDelta
    | ReasoningDelta
    | ToolCallDelta
    | ToolCallDone
    | ObjectDelta
    | Usage
    | JobCompleted
    | JobFailed
    | JobCancelled,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
TERMINAL_TYPES = frozenset({"job.completed", "job.failed", "job.cancelled"})
ENVELOPE = ("type", "job_id", "attempt", "event_id")
# the fields after the envelope, in the order model_dump_json writes them, by event type
FIELD_ORDER: dict[str, tuple[str, ...]] = {
    cls.model_fields["type"].default: tuple(f for f in cls.model_fields if f not in ENVELOPE)
    for cls in (
        JobQueued,
        JobStarted,
        JobRetrying,
        ContentDelta,
        ReasoningDelta,
        ToolCallDelta,
        ToolCallDone,
        ObjectDelta,
        Usage,
        JobCompleted,
        JobFailed,
        JobCancelled,
    )
}


def as_text(value: Any) -> str:
    """A Redis reply value as str (replies are bytes unless the client decodes them)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def from_entry(job_id: str, entry_id: Any, fields: dict[Any, Any]) -> Event:
    """Rebuild an event from a stream entry (as returned by XREAD/XRANGE)."""
    decoded = {as_text(k): as_text(v) for k, v in fields.items()}
    data = json.loads(decoded.get(keys.E_DATA, "{}"))
    data.update(
        type=decoded[keys.E_TYPE],
        attempt=int(decoded.get(keys.E_ATTEMPT, "0")),
        job_id=job_id,
        event_id=as_text(entry_id),
    )
    return EVENT_ADAPTER.validate_python(data)


# types whose fields can hold floats, which pydantic formats differently from json.dumps
# (0.000035 against 3.5e-05): entry_json sends these few through pydantic
_FLOAT_TYPES = frozenset({b"object.delta", b"job.completed", b"job.cancelled"})
_SPLICE_TYPES = frozenset(t.encode() for t in FIELD_ORDER) - _FLOAT_TYPES


def entry_json(
    job_id: str, entry_id: bytes, fields: dict[bytes, bytes], job_json: bytes | None = None
) -> bytes:
    """The event's JSON, byte for byte what ``from_entry(...).model_dump_json()`` gives, built
    straight from a stream entry (an XREAD reply, not decoded) instead of through pydantic.

    The envelope is written here and the stored ``d`` spliced in after it: ``to_fields``
    stores every field of the type, in model order, as compact JSON with the same escapes
    pydantic uses for strings, ints, booleans and null. Types that can carry floats go
    through pydantic (see ``_FLOAT_TYPES``), as does anything unexpected. ``job_json`` is
    ``json.dumps(job_id)`` encoded, for callers that write many entries of one job.
    """
    kind, attempt, data = fields.get(b"t", b""), fields.get(b"a", b"0"), fields.get(b"d", b"{}")
    if (
        kind not in _SPLICE_TYPES
        or not attempt.isdigit()
        or (attempt[0] == 48 and attempt != b"0")  # a leading zero: not how to_fields writes it
        or len(data) < 3  # every spliced type has at least one field: not "{}"
        or data[0] != 123  # "{"
    ):
        return from_entry(job_id, entry_id, fields).model_dump_json().encode()
    return b"".join(
        (
            b'{"type":"',
            kind,
            b'","job_id":',
            job_json or json.dumps(job_id).encode(),
            b',"attempt":',
            attempt,
            b',"event_id":"',
            entry_id,
            b'",',
            data[1:],
        )
    )


def from_json(raw: str | bytes) -> Event:
    """Parse an event from its JSON form (SSE ``data:``, WebSocket message)."""
    return EVENT_ADAPTER.validate_json(raw)


def is_terminal(event: Event) -> bool:
    return event.type in TERMINAL_TYPES
