"""The OpenAI chat-completions wire format: the request body, and events as ``chat.completion``
chunks (docs/protocol.md, "OpenAI-compatible surface").

Pure code: :class:`ChunkFormatter` turns a job's events, one at a time, into the SSE frames an
OpenAI client expects; :func:`completion` builds the non-streaming answer from a finished job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .events import (
    ContentDelta,
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
)
from .jobs import JobRequest, JobView

DONE = "[DONE]"
_SPLIT = "\x00tokenspool-text\x00"  # stands for a text while a chunk is split around it
MAX_REPORTED_ERRORS = 5  # validation problems named in one 400 message


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatCompletionRequest(JobRequest):
    """Body of ``POST /v1/chat/completions``: a job request plus OpenAI's streaming options."""

    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    user: str | None = Field(None, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        if (
            self.max_completion_tokens is not None
            and self.max_tokens is not None
            and self.max_completion_tokens != self.max_tokens
        ):
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def job_request(self) -> JobRequest:
        """The job to queue: ``max_completion_tokens`` becomes ``max_tokens``; ``user`` is kept
        in ``metadata`` (it is not sent to the provider)."""
        data = self.model_dump(
            exclude_none=True,
            exclude={"stream", "stream_options", "n", "user", "max_completion_tokens"},
        )
        if self.max_completion_tokens is not None:
            data["max_tokens"] = self.max_completion_tokens
        if self.user is not None:
            data["metadata"] = {"user": self.user, **(self.metadata or {})}
        return JobRequest.model_validate(data)


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error in OpenAI's shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_error_body(exc: ValidationError) -> dict[str, Any]:
    """A 400 body naming the invalid fields (the first one is ``param``)."""
    problems = []
    first_param: str | None = None
    first_code: str | None = None
    for err in exc.errors()[:MAX_REPORTED_ERRORS]:
        param = _param(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            text, code = f"unrecognized request argument supplied: {param}", "unknown_parameter"
        elif err["type"] == "missing":
            text, code = f"{param}: required", "missing_required_parameter"
        else:
            message = str(err["msg"]).removeprefix("Value error, ")
            text, code = (f"{param}: {message}" if param else message), "invalid_value"
        problems.append(text)
        if first_param is None:
            first_param, first_code = param or None, code
    if len(exc.errors()) > MAX_REPORTED_ERRORS:
        problems.append(f"and {len(exc.errors()) - MAX_REPORTED_ERRORS} more")
    return error_body(
        "; ".join(problems), "invalid_request_error", param=first_param, code=first_code
    )


@dataclass(frozen=True)
class Frame:
    """One SSE message of an OpenAI-format stream: a JSON ``data`` line (or ``[DONE]``) with the
    id of the event it came from, or a comment."""

    data: str | None = None
    id: str | None = None
    comment: str | None = None

    def encode(self, sep: str = "\r\n") -> bytes:
        """The wire bytes. A comment is one line, without the blank line that would end an SSE
        message: once it has seen an ``id:``, the openai SDK's decoder turns a comment-only
        message into an event with empty data and fails to parse it as JSON."""
        if self.comment is not None:
            return f": {' '.join(self.comment.splitlines())}{sep}".encode()
        out = f"id: {self.id}{sep}" if self.id is not None else ""
        return f"{out}data: {self.data}{sep}{sep}".encode()

    def json(self) -> Any:
        """The decoded ``data`` (``None`` for a comment or ``[DONE]``)."""
        if self.data is None or self.data == DONE:
            return None
        return json.loads(self.data)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _usage(usage: UsageInfo | None) -> dict[str, int]:
    usage = usage or UsageInfo()
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


@dataclass
class _ToolState:
    id_sent: bool = False
    name_sent: bool = False
    args_sent: int = 0  # characters of arguments sent so far


@dataclass
class ChunkFormatter:
    """Maps one job's events to OpenAI ``chat.completion.chunk`` frames, one event at a time.

    It buffers nothing: every frame carries the id of the event it came from. A ``job.retrying``
    before any output of the superseded attempt was sent becomes a comment and the stream goes on
    with the next attempt; after output was sent, OpenAI's format has no way to take it back, so
    the stream ends with an error of type ``tokenspool_retry``. ``done`` is set once the stream
    has ended (``[DONE]`` or an error); later events give no frames.
    """

    job_id: str
    model: str
    created: int
    include_usage: bool = False
    attempt: int = 0
    role_sent: bool = False
    output_sent: bool = False  # a delta of the current attempt was sent
    done: bool = False
    _tools: dict[int, _ToolState] = field(default_factory=dict)
    _usage: UsageInfo | None = None
    _text_frames: dict[bytes, tuple[bytes, bytes]] = field(
        default_factory=dict, repr=False, compare=False
    )  # by entry type: a text chunk before and after its text (text_frame)

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.job_id}"

    def _chunk(
        self, event: Event, delta: dict[str, Any], finish_reason: str | None = None
    ) -> list[Frame]:
        frames = []
        if not self.role_sent:
            self.role_sent = True
            if "role" not in delta:
                frames += self._chunk(event, {"role": "assistant", "content": ""})
        frames.append(Frame(data=_dumps(self._chunk_body(delta, finish_reason)), id=event.event_id))
        return frames

    def _chunk_body(
        self, delta: dict[str, Any], finish_reason: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            body["usage"] = None  # as OpenAI does: only the last chunk carries usage
        return body

    def _end(self, event: Event, type_: str, code: str, message: str) -> list[Frame]:
        self.done = True
        return [Frame(data=_dumps(error_body(message, type_, code=code)), id=event.event_id)]

    def text_frame(self, entry_id: bytes, fields: dict[bytes, bytes]) -> bytes | None:
        """The wire bytes ``feed`` would give for a stream entry that is a text delta of the
        current attempt after the role chunk, built from the entry itself: the stored ``d``
        (``{"text":<JSON string>}``, see ``_TextDelta.to_fields``) holds the text already
        encoded as the chunk encodes it, so no event is rebuilt and no JSON parsed or dumped.
        None for any other entry: the caller feeds it as an event (``from_entry``)."""
        kind, data = fields.get(b"t", b""), fields.get(b"d")
        if (
            self.done
            or not self.role_sent
            or data is None
            or not data.startswith(b'{"text":"')
            or not data.endswith(b'"}')
            or fields.get(b"a") != str(self.attempt).encode()
        ):
            return None
        parts = self._text_frames.get(kind)
        if parts is None:
            key = {b"content.delta": "content", b"reasoning.delta": "reasoning_content"}.get(kind)
            if key is None:
                return None
            # the chunk _chunk builds, split around its text: the same keys in the same order
            body = self._chunk_body({key: _SPLIT})
            head, _, tail = _dumps(body).partition(_dumps(_SPLIT))
            parts = self._text_frames[kind] = (head.encode(), tail.encode())
        self.output_sent = True
        return b"id: %s\r\ndata: %s%s%s\r\n\r\n" % (entry_id, parts[0], data[8:-1], parts[1])

    def feed(self, event: Event) -> list[Frame]:
        """The frames for one event (none, one, or a few)."""
        if self.done:
            return []
        if isinstance(event, JobQueued):
            if self.role_sent:
                return []
            return self._chunk(event, {"role": "assistant", "content": ""})
        if isinstance(event, JobStarted):
            self.attempt = event.attempt
            return []
        if isinstance(event, JobRetrying):
            return self._retrying(event)
        if event.attempt and self.attempt and event.attempt != self.attempt:
            return []  # a write of a superseded attempt (fencing prevents it; be safe anyway)
        if isinstance(event, ContentDelta | ReasoningDelta):
            self.output_sent = True
            key = "content" if isinstance(event, ContentDelta) else "reasoning_content"
            return self._chunk(event, {key: event.text})
        if isinstance(event, ToolCallDelta | ToolCallDone):
            return self._tool(event)
        if isinstance(event, Usage):
            self._usage = UsageInfo(
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                total_tokens=event.total_tokens,
            )
            return []
        if isinstance(event, JobCompleted):
            return self._completed(event)
        if isinstance(event, JobFailed):
            return self._end(
                event,
                event.error.type,
                "job_failed",
                f"job {self.job_id} failed: {event.error.type}: {event.error.message}",
            )
        if isinstance(event, JobCancelled):
            return self._end(
                event,
                "tokenspool_cancelled",
                "job_cancelled",
                f"job {self.job_id} was cancelled: {event.reason}",
            )
        return []

    def _retrying(self, event: JobRetrying) -> list[Frame]:
        if self.output_sent:
            return self._end(
                event,
                "tokenspool_retry",
                "attempt_superseded",
                f"job {self.job_id}: attempt {event.attempt} was superseded by attempt "
                f"{event.next_attempt} after part of its output was sent ({event.reason}); "
                "the OpenAI format cannot take back sent output, so this stream ends here. "
                f"Read the job's final output from GET /v1/jobs/{self.job_id}",
            )
        self.attempt = event.next_attempt
        self._tools.clear()
        self._usage = None
        return [
            Frame(
                comment=f"tokenspool: attempt {event.attempt} superseded before any output "
                f"({event.reason}); continuing with attempt {event.next_attempt}"
            )
        ]

    def _tool(self, event: ToolCallDelta | ToolCallDone) -> list[Frame]:
        state = self._tools.setdefault(event.index, _ToolState())
        if isinstance(event, ToolCallDelta):
            arguments = event.arguments_delta
        else:  # the complete string: send only what the deltas did not
            arguments = event.arguments[state.args_sent :]
            if not arguments and state.id_sent and state.name_sent:
                return []
        entry: dict[str, Any] = {"index": event.index}
        function: dict[str, Any] = {}
        if event.id and not state.id_sent:
            entry.update(id=event.id, type="function")
            state.id_sent = True
        if event.name and not state.name_sent:
            function["name"] = event.name
            state.name_sent = True
        function["arguments"] = arguments
        entry["function"] = function
        state.args_sent += len(arguments)
        self.output_sent = True
        return self._chunk(event, {"tool_calls": [entry]})

    def _completed(self, event: JobCompleted) -> list[Frame]:
        frames = self._chunk(event, {}, event.finish_reason or "stop")
        if self.include_usage:
            body = {
                "id": self.completion_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [],
                "usage": _usage(event.usage or self._usage),
            }
            frames.append(Frame(data=_dumps(body), id=event.event_id))
        frames.append(Frame(data=DONE, id=event.event_id))
        self.done = True
        return frames


def completion(view: JobView, created: int) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` of a completed job."""
    output = view.output
    message: dict[str, Any] = {
        "role": "assistant",
        "content": output.content if output.content or not output.tool_calls else None,
    }
    if output.reasoning:
        message["reasoning_content"] = output.reasoning
    if output.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in output.tool_calls
        ]
    return {
        "id": f"chatcmpl-{view.id}",
        "object": "chat.completion",
        "created": created,
        "model": view.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": output.finish_reason or "stop",
            }
        ],
        "usage": _usage(view.usage),
    }
