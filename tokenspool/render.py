"""Live terminal rendering of a job's events with rich."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.text import Text

from .accumulator import Accumulator
from .events import Event, JobCancelled, JobCompleted, JobFailed, JobRetrying, JobStarted


class Renderer:
    """Folds events into a live view: content, dimmed reasoning, tool calls, a status line."""

    def __init__(self) -> None:
        self.acc = Accumulator()
        self.status = "queued"
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.final: Event | None = None
        self.notes: list[str] = []

    def add(self, event: Event) -> None:
        self.acc.add(event)
        if isinstance(event, JobStarted):
            self.status = f"running (attempt {event.attempt} on {event.worker})"
        elif isinstance(event, JobRetrying):
            self.notes.append(f"attempt {event.attempt} superseded: {event.reason}")
        elif event.type in ("content.delta", "reasoning.delta", "tool_call.delta"):
            self.first_token = self.first_token or time.monotonic()
        elif isinstance(event, JobCompleted | JobFailed | JobCancelled):
            self.final = event
            self.status = event.type.removeprefix("job.")

    def __rich__(self) -> RenderableType:
        out = self.acc.output()
        parts: list[RenderableType] = []
        if self.final is None and not out.content and not out.reasoning:
            parts.append(Spinner("dots", text=Text(self.status, style="cyan")))
        if out.reasoning:
            parts.append(
                Panel(
                    Text(out.reasoning, style="dim italic"), title="reasoning", border_style="dim"
                )
            )
        if out.content:
            parts.append(Text(out.content))
        for call in out.tool_calls:
            parts.append(
                Panel(Text(call.arguments), title=f"tool call: {call.name}", border_style="magenta")
            )
        for note in self.notes:
            parts.append(Text(note, style="yellow"))
        if self.final is not None:
            parts.append(self.summary())
        return Group(*parts)

    def summary(self) -> Text:
        elapsed = time.monotonic() - self.started
        line = Text()
        style = {"completed": "green", "failed": "red", "cancelled": "yellow"}.get(
            self.status, "cyan"
        )
        line.append(f"● {self.status}", style=f"bold {style}")
        if isinstance(self.final, JobFailed):
            line.append(f"  {self.final.error.type}: {self.final.error.message}", style="red")
        usage = self.acc.usage
        if usage is not None:
            est = " (estimated)" if usage.estimated else ""
            line.append(
                f"  tokens {usage.prompt_tokens} in / {usage.completion_tokens} out{est}",
                style="dim",
            )
            if usage.cost_usd is not None:
                line.append(f"  ${usage.cost_usd:.6f}", style="dim")
        if self.first_token is not None:
            line.append(
                f"  first token {1000 * (self.first_token - self.started):.0f} ms", style="dim"
            )
        line.append(f"  total {elapsed:.2f} s", style="dim")
        return line


async def follow(
    events: AsyncIterator[Event], console: Console | None = None, as_json: bool = False
) -> Renderer:
    """Render ``events`` live (or print them as JSON lines) until the terminal event."""
    console = console or Console()
    renderer = Renderer()
    if as_json:
        async for event in events:
            renderer.add(event)
            print(event.model_dump_json(), flush=True)
        return renderer
    with Live(renderer, console=console, refresh_per_second=20, transient=False):
        async for event in events:
            renderer.add(event)
    return renderer
