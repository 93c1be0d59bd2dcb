"""``tokenspool demo``: a whole stack on loopback, one job streamed live, then a resume shown."""

from __future__ import annotations

import asyncio

from rich.console import Console

from .client import AsyncClient
from .render import follow
from .stack import start_stack

PROMPT = "Explain durable streams in one paragraph. [fake chunks=40 delay_ms=40]"


async def _run(api_url: str, console: Console) -> int:
    async with AsyncClient(api_url) as client:
        accepted = await client.submit("fake-reasoner", PROMPT)
        console.print(f"[bold]POST /v1/jobs[/bold] → 202 job [cyan]{accepted.id}[/cyan]\n")
        renderer = await follow(client.events(accepted.id), console)
        view = await client.get(accepted.id)
        # a second consumer that dropped after the 10th event resumes from its id
        seen = [e async for e in client.events(accepted.id)]
        resumed = [e async for e in client.events(accepted.id, after=seen[9].event_id or "0")]
        same = [e.event_id for e in seen[10:]] == [e.event_id for e in resumed]
        console.print(
            f"\nGET /v1/jobs/{accepted.id} → [bold]{view.status.value}[/bold], "
            f"{len(view.output.content)} characters of content, attempt {view.attempt}"
        )
        console.print(
            f"A consumer resuming after event {seen[9].event_id} received {len(resumed)} events: "
            + (
                "[green]exactly the rest, nothing repeated or missed[/green]"
                if same
                else "[red]MISMATCH[/red]"
            )
        )
        return 0 if renderer.status == "completed" and same else 1


def run_demo(workers: int = 2) -> int:
    console = Console()
    console.print(
        "[dim]starting Redis (bundled Valkey), the fake provider, the API and "
        f"{workers} workers on loopback…[/dim]"
    )
    stack = start_stack(workers=workers)
    try:
        stack.wait_ready()
        console.print(
            f"[dim]API on {stack.api_url} (OpenAPI at {stack.api_url}/docs); "
            f"logs in {stack.workdir}[/dim]\n"
        )
        return asyncio.run(_run(stack.api_url, console))
    finally:
        stack.stop()
