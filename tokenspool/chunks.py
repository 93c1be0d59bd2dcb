"""Maps provider stream chunks (OpenAI ``chat.completion.chunk`` shape) to typed events.

Works on litellm's chunk objects and on plain dicts alike. Tool-call arguments are passed on
as deltas and reassembled here, so ``tool_call.done`` carries the complete string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .events import (
    ContentDelta,
    ReasoningDelta,
    ToolCallDelta,
    ToolCallDone,
    Usage,
    UsageInfo,
    _Event,
)


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


@dataclass
class _Call:
    index: int
    id: str | None = None
    name: str | None = None
    parts: list[str] = field(default_factory=list)


class ChunkMapper:
    """Stateful mapping of one attempt's chunks to events."""

    def __init__(self, job_id: str, attempt: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.finish_reason: str | None = None
        self.usage: UsageInfo | None = None
        self._calls: dict[int, _Call] = {}
        self._done = False
        self.output_chars = 0

    def _ev(self, cls: type[_Event], **fields: Any) -> _Event:
        return cls(job_id=self.job_id, attempt=self.attempt, **fields)

    def feed(self, chunk: Any) -> list[_Event]:
        """Events for one chunk (often one, sometimes none)."""
        out: list[_Event] = []
        usage = _get(chunk, "usage")
        for choice in _get(chunk, "choices") or []:
            if (_get(choice, "index") or 0) != 0:
                continue  # n>1 is not supported; only the first choice is relayed
            delta = _get(choice, "delta")
            reasoning = _get(delta, "reasoning_content")
            if reasoning:
                self.output_chars += len(reasoning)
                out.append(self._ev(ReasoningDelta, text=reasoning))
            content = _get(delta, "content")
            if content:
                self.output_chars += len(content)
                out.append(self._ev(ContentDelta, text=content))
            for tc in _get(delta, "tool_calls") or []:
                out.append(self._tool_delta(tc))
            finish = _get(choice, "finish_reason")
            if finish:
                self.finish_reason = finish
                out += self._close_calls()
        if usage is not None and _get(usage, "total_tokens") is not None:
            prompt = int(_get(usage, "prompt_tokens") or 0)
            completion = int(_get(usage, "completion_tokens") or 0)
            total = int(_get(usage, "total_tokens") or prompt + completion)
            self.usage = UsageInfo(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=total
            )
            out.append(
                self._ev(
                    Usage, prompt_tokens=prompt, completion_tokens=completion, total_tokens=total
                )
            )
        return out

    def _tool_delta(self, tc: Any) -> _Event:
        index = int(_get(tc, "index") or 0)
        call = self._calls.setdefault(index, _Call(index=index))
        fn = _get(tc, "function")
        call_id = _get(tc, "id")
        name = _get(fn, "name")
        args = _get(fn, "arguments") or ""
        if call_id and not call.id:
            call.id = call_id
        if name and not call.name:
            call.name = name
        call.parts.append(args)
        self.output_chars += len(args)
        return self._ev(
            ToolCallDelta, index=index, id=call_id or None, name=name or None, arguments_delta=args
        )

    def _close_calls(self) -> list[_Event]:
        if self._done:
            return []
        self._done = True
        return [
            self._ev(
                ToolCallDone,
                index=c.index,
                id=c.id,
                name=c.name,
                arguments="".join(c.parts),
            )
            for c in sorted(self._calls.values(), key=lambda c: c.index)
        ]

    def finish(self) -> list[_Event]:
        """Events still owed when the stream ends (tool calls never closed by a finish_reason)."""
        return self._close_calls()
