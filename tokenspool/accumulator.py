"""Folds a job's events into its output, incrementally (no event is kept)."""

from __future__ import annotations

from typing import Any

from .events import (
    ContentDelta,
    Event,
    JobCancelled,
    JobCompleted,
    JobRetrying,
    JobStarted,
    ObjectDelta,
    ReasoningDelta,
    ToolCallDelta,
    ToolCallDone,
    Usage,
    UsageInfo,
)
from .jobs import Output, ToolCall


class Accumulator:
    """Builds the output of the current attempt; ``job.retrying`` discards the superseded one."""

    def __init__(self) -> None:
        self.attempt = 0
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._tools: dict[int, ToolCall] = {}
        self._args: dict[int, list[str]] = {}
        self.finish_reason: str | None = None
        self.usage: UsageInfo | None = None
        self.parsed: Any = None

    def _reset(self) -> None:
        self._content.clear()
        self._reasoning.clear()
        self._tools.clear()
        self._args.clear()
        self.finish_reason = None
        self.usage = None
        self.parsed = None

    def add(self, event: Event) -> None:
        if isinstance(event, JobRetrying | JobStarted):
            if event.attempt != self.attempt or isinstance(event, JobRetrying):
                self._reset()
            self.attempt = event.attempt if isinstance(event, JobStarted) else event.next_attempt
            return
        if event.attempt and self.attempt and event.attempt != self.attempt:
            return  # a write of a superseded attempt
        if isinstance(event, ContentDelta):
            self._content.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self._reasoning.append(event.text)
        elif isinstance(event, ToolCallDelta):
            call = self._tools.setdefault(event.index, ToolCall(index=event.index))
            if event.id:
                call.id = event.id
            if event.name:
                call.name = event.name
            self._args.setdefault(event.index, []).append(event.arguments_delta)
        elif isinstance(event, ToolCallDone):
            self._tools[event.index] = ToolCall(
                index=event.index, id=event.id, name=event.name, arguments=event.arguments
            )
            self._args[event.index] = [event.arguments]
        elif isinstance(event, ObjectDelta):
            self.parsed = event.value
        elif isinstance(event, Usage):
            self.usage = UsageInfo(
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                total_tokens=event.total_tokens,
            )
        elif isinstance(event, JobCompleted):
            self.finish_reason = event.finish_reason
            if event.usage is not None:
                self.usage = event.usage
        elif isinstance(event, JobCancelled) and event.usage is not None:
            self.usage = event.usage

    @property
    def content(self) -> str:
        return "".join(self._content)

    def output(self) -> Output:
        calls = []
        for index in sorted(self._tools):
            call = self._tools[index]
            calls.append(call.model_copy(update={"arguments": "".join(self._args.get(index, []))}))
        return Output(
            content="".join(self._content),
            reasoning="".join(self._reasoning),
            tool_calls=calls,
            finish_reason=self.finish_reason,
            parsed=self.parsed,
        )
