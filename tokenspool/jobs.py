"""The job model: what users submit, what crosses arq, and what ``GET /v1/jobs/{id}`` returns."""

from __future__ import annotations

import enum
import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .events import ErrorInfo, UsageInfo


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled)


class Message(BaseModel):
    """One chat message in OpenAI format; extra keys (``name``, ``tool_calls``...) pass through."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs``: a chat completion request, run in the background."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None

    def provider_kwargs(self) -> dict[str, Any]:
        """The OpenAI parameters to pass to the provider (``None`` values left out)."""
        data = self.model_dump(exclude_none=True, exclude={"model", "metadata"})
        return data


class JobPayload(BaseModel):
    """What crosses arq (as a JSON dict): the job id and its validated request."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    request: JobRequest


class ToolCall(BaseModel):
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def parsed_arguments(self) -> Any:
        """The arguments as JSON (raises ValueError if the model sent invalid JSON)."""
        return json.loads(self.arguments) if self.arguments else {}


class Output(BaseModel):
    """The accumulated result of a job (of its current attempt)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    parsed: Any = Field(None, description="the validated JSON answer of a json_schema job")


class JobView(BaseModel):
    """Body of ``GET /v1/jobs/{id}``."""

    id: str
    status: JobStatus
    model: str
    attempt: int
    worker: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    output: Output
    usage: UsageInfo | None = None
    error: ErrorInfo | None = None
    events_url: str


JOB_ID_HEADER = "X-Tokenspool-Job-Id"  # names the job of a response that streams a new one


class JobAccepted(BaseModel):
    """Body of the 202 answer to ``POST /v1/jobs``."""

    id: str
    status: JobStatus
    events_url: str


def new_job_id() -> str:
    """A sortable, URL-safe job id: milliseconds then 64 random bits."""
    return f"job_{int(time.time() * 1000):x}{secrets.token_hex(8)}"
